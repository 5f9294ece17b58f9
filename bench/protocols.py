"""OIP over gRPC vs REST with binary tensors vs REST with JSON, and streaming, measured
against a running server with tritonclient (the same client library for every protocol
and server, so the client's own cost is alike):

  - no-op: a model that echoes `x`, a [1, 4] FP32 input; CLIENTS threads in a closed
    loop for SECONDS per protocol; requests/s and p50/p99 latency.
  - MobileNetV2: one UINT8 [1, 224, 224, 3] image per request, the same loop.
  - streaming (mycel only): examples/charlm writing TOKENS characters; time to the
    first token and tokens/s through /generate_stream, against calling the same
    generator in-process.

Usage: python bench/protocols.py --http HOST:PORT --grpc HOST:PORT [--server NAME]
         [--noop MODEL] [--mobilenet MODEL] [--tokens N] [--clients N] [--seconds S]
A model left out (or a --tokens of 0) skips its section.
"""

from __future__ import annotations

import argparse
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

    errors: list[str] = []

    def run():
        call = make_call()
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                call()
            except Exception as e:  # a server without this protocol: reported, not fatal
                with lock:
                    errors.append(str(e).splitlines()[0][:120])
                return
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.monotonic() - began, errors


def calls(http_url: str, grpc_url: str, model: str, name: str, x: np.ndarray, outputs: list[str]):
    """A call per protocol sending `x` as input `name` to `model`, asking for `outputs`."""
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}[x.dtype]

    def rest(binary: bool):
        def make():
            client = httpclient.InferenceServerClient(http_url, network_timeout=120)
            a = httpclient.InferInput(name, list(x.shape), datatype)
            a.set_data_from_numpy(x, binary_data=binary)
            out = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
            return lambda: client.infer(model, [a], outputs=out).get_response()

        return make

    def grpc():
        client = grpcclient.InferenceServerClient(grpc_url)
        a = grpcclient.InferInput(name, list(x.shape), datatype)
        a.set_data_from_numpy(x)
        return lambda: client.infer(model, [a]).get_response()

    return {"REST JSON": rest(False), "REST binary": rest(True), "gRPC": grpc}


def table(server: str, title: str, protocols, clients: int, seconds: float) -> None:
    print(f"{title}, {clients} clients, {seconds:g} s each")
    print("| server | protocol | req/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, make in protocols.items():
        closed_loop(make, clients, 2.0)  # warm-up
        latencies, elapsed, errors = closed_loop(make, clients, seconds)
        if errors:
            print(f"| {server} | {name} | failed: {errors[0]} | | |", flush=True)
            continue
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1e3
        print(f"| {server} | {name} | {len(latencies) / elapsed:.1f} | {p50:.2f} | {p99:.2f} |", flush=True)
    print()


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--server", default="mycel")
    parser.add_argument("--noop", default="echo")
    parser.add_argument("--mobilenet", default="")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if args.noop:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        table(args.server, f"no-op ({args.noop})", calls(args.http, args.grpc, args.noop, "x", x, ["x"]),
              args.clients, args.seconds)
    if args.mobilenet:
        image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
        table(args.server, f"MobileNetV2 ({args.mobilenet}), one image per request",
              calls(args.http, args.grpc, args.mobilenet, "image", image, ["probabilities", "class"]),
              args.clients, args.seconds)
    if args.tokens:
        tokens = args.tokens
        print(f"streaming (examples/charlm), {tokens} tokens, best of 5")
        print("| path | first token ms | tokens/s |")
        print("| --- | --- | --- |")
        for name, run in (
            ("mycel /generate_stream", lambda: stream_through_mycel(args.http, "The web ", tokens)),
            ("in-process generator", lambda: stream_in_process("The web ", tokens)),
        ):
            runs = [run() for _ in range(5)]
            assert all(r[2] == tokens for r in runs), runs
            first = min(r[0] for r in runs) * 1e3
            rate = max(r[1] for r in runs)
            print(f"| {name} | {first:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
