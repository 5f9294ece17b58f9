"""Flower's round overhead with the same clients: a legacy gRPC server (start_server,
deprecated since 1.13 but working; the SuperLink deployment needs a running SuperLink,
SuperNodes and an app bundle) and N client processes on 127.0.0.1, FedAvg, every client
in every fit and evaluate round, the same work as mycel's client (component/work.py).

    python flower_overhead.py --clients 5 --rounds 10 --params 100000 --train-ms 200

Prints JSON: per round, the wall time from configure_fit to aggregate_evaluate (fit,
aggregation and federated evaluation, as a mycel round), the slowest client's own
train time, and their difference, the overhead."""

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "component"))

from work import train_work  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(address, train_ms):
    import flwr
    from flwr.compat.client.app import start_client

    class Client(flwr.client.NumPyClient):
        def fit(self, parameters, config):
            weights = {str(i): p for i, p in enumerate(parameters)}
            out, n, metrics = train_work(weights, train_ms)
            return [out[str(i)] for i in range(len(parameters))], n, metrics

        def evaluate(self, parameters, config):
            return 0.0, 1, {}

    start_client(server_address=address, client=Client().to_client(), insecure=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--train-ms", type=float, default=200.0)
    args = parser.parse_args()

    import flwr
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg

    rounds = {}

    class Timed(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            rounds[server_round] = {"start": time.perf_counter()}
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            rounds[server_round]["train_ms"] = max(r.metrics["train_ms"] for _, r in results)
            return super().aggregate_fit(server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            out = super().aggregate_evaluate(server_round, results, failures)
            rounds[server_round]["end"] = time.perf_counter()
            return out

    initial = [np.random.default_rng(0).standard_normal(args.params).astype(np.float32)]
    strategy = Timed(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=args.clients,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(initial),
    )
    address = f"127.0.0.1:{free_port()}"
    clients = [
        multiprocessing.Process(target=run_client, args=(address, args.train_ms), daemon=True)
        for _ in range(args.clients)
    ]
    for c in clients:
        c.start()
    start_server(server_address=address, config=ServerConfig(num_rounds=args.rounds), strategy=strategy)
    for c in clients:
        c.join(timeout=10)
    per_round = []
    for number in sorted(rounds):
        r = rounds[number]
        wall = (r["end"] - r["start"]) * 1000.0
        per_round.append({"round": number, "wall_ms": wall, "train_ms": r["train_ms"], "overhead_ms": wall - r["train_ms"]})
    overheads = sorted(r["overhead_ms"] for r in per_round)
    print(json.dumps({
        "system": f"flower {flwr.__version__}",
        "clients": args.clients, "params": args.params, "train_ms": args.train_ms,
        "rounds": per_round,
        "median_overhead_ms": overheads[len(overheads) // 2],
    }))


if __name__ == "__main__":
    main()
