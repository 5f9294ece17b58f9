"""Splits scikit-learn's digits into a held-out test set and non-IID node datasets.

    python split.py --out DIR [--nodes 5] [--seed 0] [--alpha 0.5]

Writes DIR/holdout.npz (a stratified quarter of the 1797 images, given to no node),
DIR/node-I/train.npz and DIR/node-I/test.npz (a fifth of the node's share, for the
node's own evaluation) and DIR/nodes.json (the split's parameters and every node's
class histogram). Each .npz holds x float32 [n, 64] (pixels 0..16), y int64 [n] and
index int64 [n], the rows of load_digits it took, so the parts can be checked apart.

Label skew: every class is divided among the nodes in proportions drawn from
Dirichlet(alpha); with alpha 0.5 most nodes hold a few classes and see little or
nothing of others. A draw that leaves a node with fewer than `min_examples` examples
is drawn again, so every node trains and evaluates."""

import argparse
import json
import os
from typing import List

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def save(path: str, x: np.ndarray, y: np.ndarray, index: np.ndarray) -> None:
    np.savez(path, x=x[index].astype(np.float32), y=y[index].astype(np.int64), index=index.astype(np.int64))


def label_skew(y: np.ndarray, nodes: int, alpha: float, rng: np.random.Generator) -> List[np.ndarray]:
    """Row numbers of `y` for each node, each class divided in Dirichlet(alpha) shares."""
    parts: List[list] = [[] for _ in range(nodes)]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet([alpha] * nodes)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for node, chunk in enumerate(np.split(idx, cuts)):
            parts[node].extend(chunk.tolist())
    return [np.array(p, dtype=np.int64) for p in parts]


def split(out: str, nodes: int = 5, seed: int = 0, alpha: float = 0.5, min_examples: int = 50) -> dict:
    """Writes the holdout and the node datasets under `out`; returns nodes.json's content."""
    x, y = load_digits(return_X_y=True)
    rows = np.arange(len(y))
    rest, holdout = train_test_split(rows, test_size=0.25, stratify=y, random_state=seed)
    os.makedirs(out, exist_ok=True)
    save(os.path.join(out, "holdout.npz"), x, y, np.sort(holdout))

    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts = [rest[p] for p in label_skew(y[rest], nodes, alpha, rng)]
        if min(len(p) for p in parts) >= min_examples:
            break
    else:
        raise ValueError(f"no split over {nodes} nodes gives each {min_examples} examples; use fewer nodes")

    summary: dict = {
        "dataset": "sklearn.datasets.load_digits",
        "seed": seed,
        "alpha": alpha,
        "holdout": {"examples": int(len(holdout)), "classes": np.bincount(y[holdout], minlength=10).tolist()},
        "nodes": [],
    }
    for node, members in enumerate(parts):
        members = rng.permutation(members)
        local_test = len(members) // 5
        test, train = np.sort(members[:local_test]), np.sort(members[local_test:])
        directory = os.path.join(out, f"node-{node}")
        os.makedirs(directory, exist_ok=True)
        save(os.path.join(directory, "train.npz"), x, y, train)
        save(os.path.join(directory, "test.npz"), x, y, test)
        summary["nodes"].append(
            {
                "node": node,
                "dir": f"node-{node}",
                "examples": int(len(members)),
                "train": int(len(train)),
                "test": int(len(test)),
                "classes": np.bincount(y[members], minlength=10).tolist(),
            }
        )
    with open(os.path.join(out, "nodes.json"), "w") as f:
        f.write(to_json(summary))
    return summary


def to_json(summary: dict) -> str:
    """nodes.json's text: one line per key, and per node."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items() if k != "nodes"]
    nodes = ",\n".join(f"  {json.dumps(node)}" for node in summary["nodes"])
    return "{\n" + ",\n".join(head) + f',\n "nodes": [\n{nodes}\n ]\n}}\n'


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    args = parser.parse_args()
    summary = split(args.out, args.nodes, args.seed, args.alpha)
    print(f"holdout: {summary['holdout']['examples']:4d} examples, per class {summary['holdout']['classes']}")
    for node in summary["nodes"]:
        print(
            f"node-{node['node']}: {node['examples']:4d} examples "
            f"({node['train']} train, {node['test']} test), per class {node['classes']}"
        )
