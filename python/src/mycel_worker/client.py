"""The agent's end of the protocol in Python: starts a worker and talks to it (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .protocol import Frame, ProtocolError, pack_raw_frame, read_frame, send_buffers, write_frame


class WorkerError(Exception):
    """The worker answered with an `error` frame."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback_text


class WorkerExited(Exception):
    """The worker process ended before connecting to the socket."""


class WorkerClient:
    """One connection to a worker; requests are answered in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_id = 1

    def read(self) -> Frame:
        """The next frame from the worker; ProtocolError if the connection closed."""
        frame = read_frame(self.sock)
        if frame is None:
            raise ProtocolError("the worker closed the connection")
        return frame

    def read_ready(self) -> Frame:
        """The worker's first frame, which must be `ready`; WorkerError if it is `error`."""
        return self._expect(self.read(), "ready")

    def request(self, method: str, tensors: Optional[Mapping[str, Any]] = None, **fields: Any) -> Frame:
        """Sends one request and returns the raw reply frame, whatever its method."""
        request_id = self.next_id
        self.next_id += 1
        write_frame(self.sock, {"id": request_id, "method": method, **fields}, tensors)
        reply = self.read()
        if reply.id != request_id:
            raise ProtocolError(f"reply to request {reply.id} while waiting for {request_id}")
        return reply

    def send_raw(self, header: Mapping[str, Any], body: bytes = b"") -> Frame:
        """Sends a hand-made frame (header sent exactly as given) and returns the reply."""
        send_buffers(self.sock, [pack_raw_frame(header, body)])
        return self.read()

    def predict(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        return self._expect(self.request("predict", inputs), "result").tensors()

    def get_weights(self) -> Dict[str, np.ndarray]:
        return self._expect(self.request("get_weights"), "result").tensors()

    def train(
        self, weights: Mapping[str, Any], config: Optional[Mapping[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], int, Dict[str, Any]]:
        reply = self._expect(self.request("train", weights, config=dict(config or {})), "result")
        return reply.tensors(), reply.header["num_examples"], reply.header["metrics"]

    def evaluate(
        self, weights: Mapping[str, Any], config: Optional[Mapping[str, Any]] = None
    ) -> Tuple[float, int, Dict[str, Any]]:
        reply = self._expect(self.request("evaluate", weights, config=dict(config or {})), "result")
        return reply.header["loss"], reply.header["num_examples"], reply.header["metrics"]

    def ping(self) -> None:
        self._expect(self.request("ping"), "pong")

    def shutdown(self) -> None:
        self._expect(self.request("shutdown"), "bye")

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def _expect(frame: Frame, method: str) -> Frame:
        if frame.method == "error":
            raise WorkerError(str(frame.header.get("message")), str(frame.header.get("traceback", "")))
        if frame.method != method:
            raise ProtocolError(f"expected a {method!r} frame, got {frame.method!r}")
        return frame


class WorkerProcess:
    """A started `python -m mycel_worker` and its accepted connection."""

    def __init__(self, proc: subprocess.Popen, client: WorkerClient, socket_dir: str) -> None:
        self.proc = proc
        self.client = client
        self.socket_dir = socket_dir

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """Asks the worker to shut down if it is still up; kills it if it does not exit."""
        if self.proc.poll() is None:
            try:
                self.client.shutdown()
            except (OSError, ProtocolError, WorkerError):
                pass
        self.client.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> "WorkerProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_worker(
    path: Union[str, os.PathLike],
    entrypoint: str,
    *,
    weights: Sequence[str] = (),
    config: Optional[Mapping[str, Any]] = None,
    data_dir: Optional[str] = None,
    dependencies: Sequence[Tuple[str, Union[str, os.PathLike]]] = (),
    python: Optional[str] = None,
    extra_args: Sequence[str] = (),
    stdout: Union[None, int, IO[Any]] = None,
    stderr: Union[None, int, IO[Any]] = None,
    connect_timeout: float = 60.0,
    io_timeout: Optional[float] = 60.0,
) -> WorkerProcess:
    """Listens on a fresh Unix socket, starts a worker on it and accepts its connection.

    The `ready` (or `error`) frame is left unread: call `client.read_ready()`.
    Raises WorkerExited if the process ends first, TimeoutError if it never connects.
    """
    # Unix socket paths are limited to ~108 bytes, so keep this one short.
    socket_dir = tempfile.mkdtemp(prefix="mycel-")
    socket_path = os.path.join(socket_dir, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    proc: Optional[subprocess.Popen] = None
    try:
        listener.bind(socket_path)
        listener.listen(1)
        command = [
            python or sys.executable, "-m", "mycel_worker",
            "--socket", socket_path, "--path", os.fspath(path), "--entrypoint", entrypoint,
        ]
        for weight in weights:
            command += ["--weights", weight]
        if config is not None:
            command += ["--config", json.dumps(config)]
        if data_dir is not None:
            command += ["--data-dir", data_dir]
        for name, directory in dependencies:
            command += ["--dependency", f"{name}={os.fspath(directory)}"]
        command += list(extra_args)
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=os.fspath(path))
        conn = _accept(listener, proc, connect_timeout)
        conn.settimeout(io_timeout)
        return WorkerProcess(proc, WorkerClient(conn), socket_dir)
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    finally:
        listener.close()


def _accept(listener: socket.socket, proc: subprocess.Popen, timeout: float) -> socket.socket:
    # Waits on the listener in short slices so a worker that dies before connecting is
    # noticed at once rather than after the whole timeout.
    deadline = time.monotonic() + timeout
    while True:
        readable, _, _ = select.select([listener], [], [], 0.1)
        if readable:
            conn, _ = listener.accept()
            return conn
        code = proc.poll()
        if code is not None:
            raise WorkerExited(f"worker exited with status {code} before connecting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker did not connect within {timeout} s")
