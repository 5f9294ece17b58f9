"""Fixtures that write small components and start real worker processes on them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from mycel_worker.client import WorkerProcess, start_worker

ECHO = '''
class Echo:
    def __init__(self, ctx):
        self.ctx = ctx

    def predict(self, inputs):
        return dict(inputs)
'''


@pytest.fixture
def component(tmp_path: Path) -> Callable[..., Path]:
    """Writes `files` ({relative path: text}) into a fresh component directory."""
    count = 0

    def write(files: dict) -> Path:
        nonlocal count
        count += 1
        root = tmp_path / f"component{count}"
        for relative, text in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                target.write_bytes(text)
            else:
                target.write_text(textwrap.dedent(text))
        root.mkdir(exist_ok=True)
        return root

    return write


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts workers whose stdout/stderr go to files in tmp_path; stops them all at the end."""
    started: List[WorkerProcess] = []

    def start(path: Path, entrypoint: str, **kwargs) -> WorkerProcess:
        index = len(started)
        kwargs.setdefault("stdout", open(tmp_path / f"worker{index}.out", "w"))
        kwargs.setdefault("stderr", open(tmp_path / f"worker{index}.err", "w"))
        process = start_worker(path, entrypoint, connect_timeout=30, io_timeout=30, **kwargs)
        process.stdout_path = tmp_path / f"worker{index}.out"  # type: ignore[attr-defined]
        process.stderr_path = tmp_path / f"worker{index}.err"  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout=10)


@pytest.fixture
def echo(component, worker) -> WorkerProcess:
    """A ready echo worker."""
    process = worker(component({"model.py": ECHO}), "model:Echo")
    process.client.read_ready()
    return process
