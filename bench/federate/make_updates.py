"""Writes a global model and client updates as safetensors files, from a fixed seed.

    make_updates.py DIR [--clients 10] [--tensors 5] [--values 5000000]

DIR/global.safetensors, DIR/update-K.safetensors (float32, the global model plus
client-specific noise) and DIR/counts.json (each update's example count).
"""

import argparse
import json
import pathlib

import numpy as np
from safetensors.numpy import save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--tensors", type=int, default=5)
    parser.add_argument("--values", type=int, default=5_000_000, help="per tensor")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(20261124)
    # Shapes like a model's: one matrix per tensor, the last one a bias-like vector.
    shapes = [(args.values // 1000, 1000)] * (args.tensors - 1) + [(args.values,)]
    names = [f"layer{i}.weight" for i in range(args.tensors - 1)] + ["head.bias"]
    global_model = {n: rng.standard_normal(s, dtype=np.float32) for n, s in zip(names, shapes)}
    save_file(global_model, str(args.dir / "global.safetensors"), metadata={"format": "np"})

    counts = []
    for k in range(args.clients):
        update = {
            n: w + np.float32(0.01) * rng.standard_normal(w.shape, dtype=np.float32)
            for n, w in global_model.items()
        }
        save_file(update, str(args.dir / f"update-{k}.safetensors"))
        counts.append(int(rng.integers(50, 5000)))
    (args.dir / "counts.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    main()
