"""The warm template: a real `python -m mycel_worker.template` that imports what a
component imports, forks real workers on request, and reports how each one ended."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from mycel_worker.client import WorkerClient
from mycel_worker.template import top_level_imports

from conftest import ECHO

MODEL = "import json\nimport numpy as np\nfrom helper import twice\n" + ECHO
HELPER = "import os.path\n\ndef twice(x):\n    import torch  # not at top level: not preloaded\n    return 2 * x\n"


def test_top_level_imports_leave_out_the_components_own_modules(component):
    root = component({"model.py": MODEL, "helper.py": HELPER, "pkg/__init__.py": "from . import x\n"})
    assert top_level_imports([str(root)]) == ["os", "json", "numpy"]


def _line(conn: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        assert chunk, f"the template closed the connection after {data!r}"
        data += chunk
    return json.loads(data)


@pytest.fixture
def template(component):
    root = component({"model.py": MODEL, "helper.py": HELPER})
    # Unix socket paths are short: keep them out of pytest's deep tmp_path.
    run = tempfile.mkdtemp(prefix="mycel-")
    path = os.path.join(run, "t.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mycel_worker.template", "--socket", path, "--preload", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"ready\n"
    yield proc, path, root, run
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(run, ignore_errors=True)


def test_forked_workers_serve_and_their_exit_is_reported(template):
    proc, path, root, run = template
    worker_socket = os.path.join(run, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(worker_socket)
    listener.listen(1)
    log = os.path.join(run, "worker.log")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    request = {
        "argv": ["--socket", worker_socket, "--path", str(root), "--entrypoint", "model:Echo"],
        "env": {"OMP_NUM_THREADS": "1"},
        "cwd": str(root),
        "log": log,
    }
    conn.sendall(json.dumps(request).encode() + b"\n")
    pid = _line(conn)["pid"]
    accepted, _ = listener.accept()
    accepted.settimeout(30)
    client = WorkerClient(accepted)
    assert client.read_ready().header["pid"] == pid
    np.testing.assert_array_equal(client.predict({"x": np.arange(3)})["x"], np.arange(3))
    os.kill(pid, signal.SIGKILL)
    status = _line(conn)["status"]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    with open(log) as f:
        assert f"mycel worker ready: model:Echo (pid {pid})" in f.read()
    # The template is still there for the next one; it imported numpy once, up front.
    assert proc.poll() is None
    # It leaves when the agent does: its stdin closes.
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    stderr = proc.stderr.read()
    assert b"with os, json, numpy imported" in stderr and b"the agent is gone" in stderr


def test_a_worker_that_fails_to_start_exits_1_with_its_reason_in_its_log(template):
    proc, path, root, run = template
    log = os.path.join(run, "broken.log")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    request = {"argv": ["--socket", os.path.join(run, "nobody.sock"), "--path", str(root), "--entrypoint", "model:Echo"],
               "env": {}, "cwd": str(root), "log": log}
    conn.sendall(json.dumps(request).encode() + b"\n")
    _line(conn)
    status = _line(conn)["status"]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    with open(log) as f:
        assert "cannot connect to the agent" in f.read()
