"""FedAvg over the node datasets in one process, without mycel: the numbers to expect.

    python simulate.py --data DIR [--rounds 10] [--local-epochs 20] [--mu M]
    python simulate.py --seed S                  # split with split.py's seed S first

Every round each node's component (model.Digits with ctx.data_dir = DIR/node-I)
trains from the global weights with config {"round", "local_epochs"[, "proximal_mu"]},
exactly what a federation sends, and the updates are averaged weighted by example
count, as mycel's FedAvg does. Prints each round's held-out accuracy to stderr, then
one JSON object: per-round held-out accuracy and loss, the final accuracy, the central
baseline (central.py, rounds × local epochs) and the CPU seconds the federation took."""

import argparse
import json
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np

from central import component, holdout, node_dirs, train_central
from model import LOCAL_EPOCHS, ROUNDS, Weights


def average(updates: List[Weights], counts: List[int]) -> Weights:
    """FedAvg: the example-weighted mean of the updates, in float64, as float32."""
    total = float(sum(counts))
    return {
        name: (sum(u[name].astype(np.float64) * n for u, n in zip(updates, counts)) / total).astype(np.float32)
        for name in updates[0]
    }


def fedavg(data: str, rounds: int = ROUNDS, local_epochs: int = LOCAL_EPOCHS, mu: Optional[float] = None) -> dict:
    """Runs the federation over every node in `data`; returns its history."""
    nodes = [component(d) for d in node_dirs(data)]
    weights = nodes[0].get_weights()
    history = []
    started = time.process_time()
    for round_ in range(1, rounds + 1):
        config = {"round": round_, "local_epochs": local_epochs}
        if mu:
            config["proximal_mu"] = mu
        results = [node.train(weights, config) for node in nodes]
        weights = average([r[0] for r in results], [r[1] for r in results])
        history.append(holdout(weights, data))
    return {"history": history, "weights": weights, "cpu_s": time.process_time() - started}


def simulate(data: str, rounds: int = ROUNDS, local_epochs: int = LOCAL_EPOCHS, mu: Optional[float] = None) -> dict:
    """The federation and the central baseline on the same split."""
    federated = fedavg(data, rounds, local_epochs, mu)
    central = holdout(train_central(data, rounds * local_epochs), data)
    accuracy = federated["history"][-1]["accuracy"]
    return {
        "rounds": rounds,
        "local_epochs": local_epochs,
        "proximal_mu": mu,
        "accuracy_per_round": [h["accuracy"] for h in federated["history"]],
        "loss_per_round": [h["loss"] for h in federated["history"]],
        "federated_accuracy": accuracy,
        "central_accuracy": central["accuracy"],
        "difference_points": round(100 * (accuracy - central["accuracy"]), 2),
        "federated_cpu_s": round(federated["cpu_s"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="the directory split.py wrote")
    where.add_argument("--seed", type=int, help="split with this seed into a temporary directory")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    parser.add_argument("--mu", type=float, help="FedProx's proximal_mu (default: plain FedAvg)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            import split

            data = scratch
            split.split(data, seed=args.seed)
        result = simulate(data, args.rounds, args.local_epochs, args.mu)
    for round_, accuracy in enumerate(result["accuracy_per_round"], 1):
        print(f"round {round_:2d}: held-out accuracy {accuracy:.4f}", file=sys.stderr)
    print(
        f"federated {result['federated_accuracy']:.4f}, central {result['central_accuracy']:.4f}, "
        f"difference {result['difference_points']:+.2f} points",
        file=sys.stderr,
    )
    print(json.dumps(result))
