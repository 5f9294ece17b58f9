"""A warm template: one process per model environment that imports what the
component's modules import at top level (torch, torchvision, ...) once, then forks a
serving worker for each replica the agent starts, so a new replica pays only for its
own model's `__init__`, not for importing its framework again.

    python -m mycel_worker.template --socket PATH [--preload DIR ...]

The agent connects to PATH once per worker and sends one JSON line, `{"argv": [...],
"env": {...}, "cwd": "...", "log": "..."}`: the worker's arguments (as for `python -m
mycel_worker`), the variables to add to its environment, its working directory, and
the file its stdout and stderr go to. The template forks, answers `{"pid": N}`, and
when that worker exits, `{"status": S}` (the raw wait status) on the same connection.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

# A component with more modules than this is not scanned further: preloading is an
# optimisation, and scanning must stay quick.
MAX_FILES = 500


def top_level_imports(dirs: Sequence[str]) -> List[str]:
    """The modules `dirs`' Python files import at top level, by their first name, in
    the order first seen; those the directories define themselves left out."""
    own: Set[str] = set()
    found: List[str] = []
    files: List[Path] = []
    for d in dirs:
        root = Path(d)
        for entry in root.iterdir() if root.is_dir() else []:
            own.add(entry.stem if entry.suffix == ".py" else entry.name)
        files.extend(sorted(root.rglob("*.py"))[:MAX_FILES])
    for path in files[:MAX_FILES]:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in tree.body:
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                first = name.split(".")[0]
                if first not in own and first not in found and first != "__future__":
                    found.append(first)
    return found


def preload(dirs: Sequence[str]) -> List[str]:
    """Imports what `dirs` import at top level; returns the modules that imported."""
    loaded = []
    for name in top_level_imports(dirs):
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as e:  # a module that fails here fails in the worker, with its traceback
            log(f"not preloading {name}: {type(e).__name__}: {e}")
    return loaded


def log(message: str) -> None:
    print(f"mycel template: {message}", file=sys.stderr, flush=True)


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def become_worker(request: Dict, keep: socket.socket, close: Sequence[int]) -> None:
    """In the forked child: take the worker's output, directory and environment, run it,
    and exit with its status. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            try:
                os.close(fd)
            except OSError:
                pass
        keep.close()
        out = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.update({str(k): str(v) for k, v in request.get("env", {}).items()})
        torch = sys.modules.get("torch")
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit():
            # torch read the template's environment when it was imported.
            torch.set_num_threads(int(threads))
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["mycel_worker", *argv]
        from .worker import main as worker_main

        code = worker_main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(listener: socket.socket) -> int:
    """Forks a worker per connection and reports each one's exit, until the agent goes
    away: it holds the template's stdin, which closes when the agent exits, however it
    exits. Workers outlive the template; each exits when the agent's socket closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: Dict[int, socket.socket] = {}

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()

    agent = sys.stdin.fileno()
    while True:
        try:
            readable, _, _ = select.select([listener, wake_r, agent], [], [])
        except InterruptedError:
            continue
        if agent in readable and not os.read(agent, 4096):
            log("the agent is gone; exiting")
            return 0
        if wake_r in readable:
            os.read(wake_r, 4096)
            reap()
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        try:
            request = json.loads(read_line(conn))
        except ValueError as e:
            conn.sendall(json.dumps({"error": f"malformed request: {e}"}).encode() + b"\n")
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            others = [listener.fileno(), wake_r, wake_w, *(c.fileno() for c in children.values())]
            become_worker(request, conn, others)
        children[pid] = conn
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        # A worker that exited before it was recorded is reported now.
        reap()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mycel_worker.template", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the Unix socket to take requests on")
    parser.add_argument("--preload", action="append", default=[], help="a directory whose imports to load (repeatable)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    loaded = preload(args.preload)
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    os.chmod(args.socket, 0o600)
    listener.listen(64)
    log(f"ready in {time.monotonic() - started:.1f}s with {', '.join(loaded) or 'nothing'} imported (pid {os.getpid()})")
    # The agent waits for this line before it asks for workers.
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        return serve(listener)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
