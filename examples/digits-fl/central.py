"""The central baseline, and held-out accuracy of any weights file.

    python central.py --data DIR [--epochs 200]    # train on all nodes' data pooled
    python central.py --data DIR --weights FILE    # evaluate FILE

DIR is what split.py wrote. Both print {"accuracy", "loss"} on DIR/holdout.npz as
JSON. Central training is the component itself (model.Digits, built with a stand-in
ctx) trained on the union of every node's train.npz, from weights/model.safetensors,
with the same optimizer settings as a node. Its epochs default to the federation's
rounds × local epochs (10 × 20), so both see each training example equally often."""

import argparse
import glob
import json
import os
from types import SimpleNamespace
from typing import Optional, Tuple

import numpy as np
from safetensors.numpy import load_file

from model import LOCAL_EPOCHS, ROUNDS, Digits, Weights, load_split, loss_and_accuracy

HERE = os.path.dirname(os.path.abspath(__file__))
INITIAL = os.path.join(HERE, "weights", "model.safetensors")


def component(data_dir: Optional[str] = None, weights: str = INITIAL) -> Digits:
    """The component as a worker builds it, with a stand-in for mycel's ctx."""
    ctx = SimpleNamespace(path=HERE, weights={"model": weights}, config={}, data_dir=data_dir, dependencies={})
    return Digits(ctx)


def node_dirs(data: str) -> list:
    """The node-I directories split.py wrote, in node order."""
    dirs = glob.glob(os.path.join(data, "node-*"))
    if not dirs:
        raise FileNotFoundError(f"no node-* directories in {data}; run split.py --out {data}")
    return sorted(dirs, key=lambda d: int(d.rsplit("-", 1)[1]))


def pooled(data: str) -> Tuple[np.ndarray, np.ndarray]:
    """Every node's train.npz, concatenated."""
    parts = [load_split(d, "train") for d in node_dirs(data)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def train_central(data: str, epochs: int = ROUNDS * LOCAL_EPOCHS) -> Weights:
    """The component trained on all nodes' training data pooled."""
    model = component()
    x, y = pooled(data)
    return model.fit(model.get_weights(), x, y, {"local_epochs": epochs})


def holdout(weights: Weights, data: str) -> dict:
    """{"accuracy", "loss"} of `weights` on data/holdout.npz."""
    loss, accuracy = loss_and_accuracy(weights, *load_split(data, "holdout"))
    return {"accuracy": accuracy, "loss": loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the directory split.py wrote")
    parser.add_argument("--epochs", type=int, default=ROUNDS * LOCAL_EPOCHS)
    parser.add_argument("--weights", help="a safetensors file to evaluate instead of training")
    args = parser.parse_args()
    weights = load_file(args.weights) if args.weights else train_central(args.data, args.epochs)
    print(json.dumps(holdout(weights, args.data)))
