"""OIP over gRPC vs REST with binary tensors vs REST with JSON, and streaming, measured
against a running mycel gateway with tritonclient (the same client library for every
protocol, so the client's own cost is alike):

  - no-op: examples/echo, a [1, 4] FP32 input; CLIENTS threads in a closed loop for
    SECONDS per protocol; requests/s and p50/p99 latency.
  - streaming: examples/charlm writing TOKENS characters; time to the first token and
    tokens/s through /generate_stream, against calling the same generator in-process.

Usage: python bench/protocols.py HTTP_HOST:PORT GRPC_HOST:PORT [CLIENTS] [SECONDS] [TOKENS]
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parent.parent


def closed_loop(make_call, clients: int, seconds: float):
    """Runs `make_call()`'s call in `clients` threads for `seconds`; latencies in s."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run():
        call = make_call()
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            call()
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.monotonic() - began


def echo_calls(http_url: str, grpc_url: str):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)

    def rest(binary: bool):
        def make():
            client = httpclient.InferenceServerClient(http_url)
            a = httpclient.InferInput("x", [1, 4], "FP32")
            a.set_data_from_numpy(x, binary_data=binary)
            out = [httpclient.InferRequestedOutput("x", binary_data=binary)]
            return lambda: client.infer("echo", [a], outputs=out).as_numpy("x")

        return make

    def grpc():
        client = grpcclient.InferenceServerClient(grpc_url)
        a = grpcclient.InferInput("x", [1, 4], "FP32")
        a.set_data_from_numpy(x)
        return lambda: client.infer("echo", [a]).as_numpy("x")

    return {"REST JSON": rest(False), "REST binary": rest(True), "gRPC": grpc}


def stream_through_mycel(http_url: str, prompt: str, tokens: int):
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/charlm/generate_stream",
        data=json.dumps({"text_input": prompt, "max_tokens": tokens}).encode(),
        method="POST",
    )
    started = time.perf_counter()
    first = None
    count = 0
    with urllib.request.urlopen(request) as response:
        for line in response:
            if line.startswith(b"data: "):
                count += 1
                if first is None:
                    first = time.perf_counter() - started
    return first, count / (time.perf_counter() - started), count


def stream_in_process(prompt: str, tokens: int):
    sys.path.insert(0, str(ROOT / "examples/charlm"))
    from model import CharLM  # noqa: E402

    model = CharLM(types.SimpleNamespace(path=str(ROOT / "examples/charlm")))
    inputs = {"text_input": np.array([prompt.encode()], dtype=object), "max_tokens": np.array([tokens])}
    started = time.perf_counter()
    first = None
    count = 0
    for _ in model.generate(inputs):
        count += 1
        if first is None:
            first = time.perf_counter() - started
    return first, count / (time.perf_counter() - started), count


def main() -> None:
    http_url, grpc_url = sys.argv[1], sys.argv[2]
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    print(f"no-op (examples/echo), {clients} clients, {seconds:g} s each")
    print("| protocol | req/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    for name, make in echo_calls(http_url, grpc_url).items():
        closed_loop(make, clients, 1.0)  # warm-up
        latencies, elapsed = closed_loop(make, clients, seconds)
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3
        print(f"| {name} | {len(latencies) / elapsed:.0f} | {p50:.2f} | {p99:.2f} |")
    print()
    print(f"streaming (examples/charlm), {tokens} tokens, best of 5")
    print("| path | first token ms | tokens/s |")
    print("| --- | --- | --- |")
    for name, run in (
        ("mycel /generate_stream", lambda: stream_through_mycel(http_url, "The web ", tokens)),
        ("in-process generator", lambda: stream_in_process("The web ", tokens)),
    ):
        runs = [run() for _ in range(5)]
        assert all(r[2] == tokens for r in runs), runs
        first = min(r[0] for r in runs) * 1e3
        rate = max(r[1] for r in runs)
        print(f"| {name} | {first:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
