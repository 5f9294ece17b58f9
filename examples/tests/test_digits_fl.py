"""The digits federated-learning example: its non-IID split, and its model trained and
evaluated through a real worker process exactly as an agent calls it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mycel_worker.client import WorkerError, start_worker

EXAMPLE = Path(__file__).resolve().parent.parent / "digits-fl"
sys.path.insert(0, str(EXAMPLE))

import split  # noqa: E402
import simulate  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    summary = split.split(str(out), nodes=5, seed=0)
    return out, summary


def start(tmp_path: Path, data_dir=None):
    log = open(tmp_path / "worker.log", "a")
    process = start_worker(
        EXAMPLE,
        "model:Digits",
        weights=["weights/model.safetensors"],
        data_dir=data_dir,
        stdout=log,
        stderr=log,
    )
    process.client.read_ready()
    return process


def test_the_split_is_non_iid_and_keeps_the_holdout_apart(data):
    out, summary = data
    counts = np.array([node["classes"] for node in summary["nodes"]])
    assert counts.shape == (5, 10) and (counts.sum(axis=1) > 0).all()
    # Strong label skew: every node misses some class or sees it rarely.
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert (shares.min(axis=1) < 0.02).all()
    assert shares.max() > 0.25
    holdout = np.load(out / "holdout.npz")
    pooled = sum(node["examples"] for node in summary["nodes"])
    assert pooled + len(holdout["y"]) == 1797


def test_train_and_evaluate_through_a_worker(data, tmp_path):
    out, _ = data
    with start(tmp_path, str(out / "node-1")) as worker:
        weights = worker.client.get_weights()
        before, n_eval, _ = worker.client.evaluate(weights, {})
        trained, n_train, metrics = worker.client.train(weights, {"round": 1, "local_epochs": 2})
        assert n_train > 0 and n_eval > 0
        assert {k: (v.shape, v.dtype) for k, v in trained.items()} == {
            k: (v.shape, v.dtype) for k, v in weights.items()
        }
        after, _, accuracy = worker.client.evaluate(trained, {})
        assert after < before
        assert 0.0 <= accuracy["accuracy"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
        # Deterministic for a given round, so reruns reproduce.
        again, _, _ = worker.client.train(weights, {"round": 1, "local_epochs": 2})
        for name in trained:
            np.testing.assert_array_equal(again[name], trained[name])


def test_training_without_a_dataset_says_how_to_give_one(tmp_path):
    with start(tmp_path) as worker:
        with pytest.raises(WorkerError, match="--dataset digits=DIR"):
            worker.client.train(worker.client.get_weights(), {})


def test_fedavg_lands_within_two_points_of_central_training(data):
    out, _ = data
    federated = simulate.fedavg(str(out), rounds=10, local_epochs=20)[-1]
    result = json.loads(
        subprocess.run(
            [sys.executable, str(EXAMPLE / "central.py"), "--data", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert federated >= result["accuracy"] - 0.02, (federated, result)
