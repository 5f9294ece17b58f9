"""The limit for the MobileNetV2 benchmark: the same model in this process, no server.

    OMP_NUM_THREADS=1 .venv/bin/python torch_loop.py --batch 8 --threads 1 --seconds 10

Two loops, each timed for --seconds after a short warmup, both at --batch images per call:
  model    `model(batch)` under torch.inference_mode on a normalized FP32 batch: the
           network alone.
  predict  the component's predict() (examples/mobilenet-v2/model.py) on a UINT8 pixel
           batch, as the servers call it: normalize, network, softmax, argmax.
Prints images/s for each; --json FILE also writes them.
"""

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

COMPONENT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "mobilenet-v2"))


def timed(step, batch, seconds, warmup=3):
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"calls": calls, "seconds": elapsed, "images_per_s": calls * batch / elapsed,
            "ms_per_call": 1000 * elapsed / calls}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    sys.path.insert(0, COMPONENT)
    from model import MobileNetV2

    component = MobileNetV2(SimpleNamespace(path=COMPONENT, weights={}))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(args.batch, 224, 224, 3), dtype=np.uint8)
    normalized = torch.from_numpy(np.ascontiguousarray(
        ((pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - 0.45) / 0.225))

    def network():
        with torch.inference_mode():
            component.model(normalized)

    results = {
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": timed(network, args.batch, args.seconds),
        "predict": timed(lambda: component.predict({"image": pixels}), args.batch, args.seconds),
    }
    for name in ("model", "predict"):
        r = results[name]
        print(f"torch loop {name:7s} batch {args.batch}, {results['threads']} thread(s): "
              f"{r['images_per_s']:.1f} images/s ({r['ms_per_call']:.1f} ms per call)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
