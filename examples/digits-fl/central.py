"""The central baseline, and held-out accuracy of any weights file.

    python central.py --data DIR [--epochs 10]     # train on all nodes' data pooled
    python central.py --data DIR --weights FILE    # evaluate FILE

Both print {"accuracy", "loss"} on DIR/holdout.npz as JSON. Central training starts
from the same weights with the same optimizer; its epochs equal the federation's
rounds × local epochs (10 × 20), so both see each example equally often."""

import argparse
import glob
import json
import os

import numpy as np
from safetensors.numpy import load_file

from model import load_split, loss_and_accuracy, sgd

HERE = os.path.dirname(os.path.abspath(__file__))


def pooled(data: str):
    parts = [load_split(d, "train") for d in sorted(glob.glob(os.path.join(data, "node-*")))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--weights")
    args = parser.parse_args()
    if args.weights:
        weights = load_file(args.weights)
    else:
        x, y = pooled(args.data)
        weights = sgd(load_file(os.path.join(HERE, "weights", "model.safetensors")), x, y, args.epochs, seed=0)
    x, y = load_split(args.data, "holdout")
    loss, accuracy = loss_and_accuracy(weights, x, y)
    print(json.dumps({"accuracy": accuracy, "loss": loss}))
