"""Splits scikit-learn's digits into a held-out test set and non-IID node datasets.

    python split.py --out DIR [--nodes 5] [--seed 0]

DIR/holdout.npz (a stratified quarter, on no node) and DIR/node-I/{train,test}.npz.
Label skew: each node draws its share of every class from a Dirichlet(0.5)
distribution, so most nodes hold a few classes and see little of the others."""

import argparse
import json
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def split(out: str, nodes: int = 5, seed: int = 0, alpha: float = 0.5) -> dict:
    x, y = load_digits(return_X_y=True)
    x_rest, x_hold, y_rest, y_hold = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "holdout.npz"), x=x_hold.astype(np.float32), y=y_hold)
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(nodes)]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y_rest == label))
        shares = rng.dirichlet([alpha] * nodes)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for node, chunk in enumerate(np.split(idx, cuts)):
            parts[node].extend(chunk.tolist())
    summary = {"nodes": [], "holdout": int(len(y_hold)), "alpha": alpha, "seed": seed}
    for node, members in enumerate(parts):
        members = rng.permutation(np.array(members, dtype=int))
        local_test = max(1, len(members) // 5)
        test, train = members[:local_test], members[local_test:]
        directory = os.path.join(out, f"node-{node}")
        os.makedirs(directory, exist_ok=True)
        for name, chosen in (("train", train), ("test", test)):
            np.savez(os.path.join(directory, f"{name}.npz"), x=x_rest[chosen].astype(np.float32), y=y_rest[chosen])
        counts = np.bincount(y_rest[members], minlength=10).tolist()
        summary["nodes"].append({"node": node, "examples": int(len(members)), "classes": counts})
    with open(os.path.join(out, "nodes.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for node in split(args.out, args.nodes, args.seed)["nodes"]:
        print(f"node-{node['node']}: {node['examples']:4d} examples, per class {node['classes']}")
