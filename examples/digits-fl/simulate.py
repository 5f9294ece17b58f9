"""FedAvg over the node datasets in one process, without mycel: the numbers to expect.

    python simulate.py --data DIR [--rounds 10] [--local-epochs 1]"""

import argparse
import glob
import json
import os

import numpy as np
from safetensors.numpy import load_file

from model import load_split, loss_and_accuracy, sgd

HERE = os.path.dirname(os.path.abspath(__file__))


def fedavg(data: str, rounds: int, local_epochs: int) -> list:
    nodes = sorted(glob.glob(os.path.join(data, "node-*")))
    splits = [load_split(d, "train") for d in nodes]
    holdout = load_split(data, "holdout")
    w = load_file(os.path.join(HERE, "weights", "model.safetensors"))
    history = []
    for r in range(1, rounds + 1):
        updates = [(sgd(w, x, y, local_epochs, seed=r * 1000 + len(y)), len(y)) for x, y in splits]
        total = sum(n for _, n in updates)
        w = {k: sum(u[k].astype(np.float64) * n for u, n in updates) / total for k in w}
        w = {k: v.astype(np.float32) for k, v in w.items()}
        history.append(loss_and_accuracy(w, *holdout)[1])
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=20)
    args = parser.parse_args()
    history = fedavg(args.data, args.rounds, args.local_epochs)
    print(json.dumps({"fedavg_accuracy_per_round": history}))
