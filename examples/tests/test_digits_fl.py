"""The digits federated-learning example: its non-IID split kept apart from the
holdout, its model served, trained and evaluated through a real worker process
exactly as an agent calls it, and FedAvg over five nodes against central training."""

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

import simulate  # noqa: E402
import split  # noqa: E402


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
    assert json.loads((out / "nodes.json").read_text()) == summary
    counts = np.array([node["classes"] for node in summary["nodes"]])
    assert counts.shape == (5, 10)
    assert all(node["train"] > 0 and node["test"] > 0 for node in summary["nodes"])
    # Strong label skew: every node misses some class or sees it rarely, and some
    # class makes up a large share of some node.
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert (shares.min(axis=1) < 0.02).all()
    assert shares.max() > 0.25

    holdout = np.load(out / "holdout.npz")
    assert len(holdout["y"]) == summary["holdout"]["examples"] == 450
    # Stratified: the held-out quarter has every class in proportion.
    assert np.bincount(holdout["y"], minlength=10).min() >= 40
    parts = [holdout["index"]]
    for node in range(5):
        for name in ("train", "test"):
            part = np.load(out / f"node-{node}" / f"{name}.npz")
            assert part["x"].dtype == np.float32 and part["x"].shape == (len(part["y"]), 64)
            assert part["y"].dtype == np.int64
            parts.append(part["index"])
    everything = np.concatenate(parts)
    # Disjoint, and together all 1797 images.
    assert len(everything) == len(np.unique(everything)) == 1797


def test_the_split_is_reproducible(data, tmp_path):
    out, summary = data
    assert split.split(str(tmp_path), nodes=5, seed=0) == summary
    for name in ("holdout.npz", "node-3/train.npz"):
        np.testing.assert_array_equal(np.load(tmp_path / name)["index"], np.load(out / name)["index"])


def test_predicts_probabilities_and_labels(tmp_path):
    from sklearn.datasets import load_digits

    pixels = load_digits().data[:5].astype(np.float32)
    with start(tmp_path) as worker:
        out = worker.client.predict({"pixels": pixels})
        assert out["probabilities"].shape == (5, 10) and out["probabilities"].dtype == np.float32
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
        assert out["label"].dtype == np.int64
        np.testing.assert_array_equal(out["label"], out["probabilities"].argmax(axis=1))
        with pytest.raises(WorkerError, match=r"pixels must be \[N, 64\]"):
            worker.client.predict({"pixels": np.zeros((1, 8, 8), dtype=np.float32)})
        worker.client.ping()


def test_train_and_evaluate_through_a_worker(data, tmp_path):
    out, summary = data
    with start(tmp_path, str(out / "node-1")) as worker:
        weights = worker.client.get_weights()
        before, n_eval, _ = worker.client.evaluate(weights, {})
        assert n_eval == summary["nodes"][1]["test"]
        trained, n_train, metrics = worker.client.train(weights, {"round": 1, "local_epochs": 2})
        assert n_train == summary["nodes"][1]["train"]
        assert {k: (v.shape, v.dtype) for k, v in trained.items()} == {
            k: (v.shape, v.dtype) for k, v in weights.items()
        }
        assert all(np.isfinite(v).all() for v in trained.values())
        # Training lowers the loss on the node's own data, train and test.
        _, _, untrained = worker.client.train(weights, {"local_epochs": 0})
        assert metrics["loss"] < 0.5 * untrained["loss"]
        after, _, accuracy = worker.client.evaluate(trained, {})
        assert after < before
        assert 0.5 < accuracy["accuracy"] <= 1.0 and 0.5 < metrics["accuracy"] <= 1.0
        # Deterministic for a given round, so reruns reproduce; another round differs.
        again, _, _ = worker.client.train(weights, {"round": 1, "local_epochs": 2})
        for name in trained:
            np.testing.assert_array_equal(again[name], trained[name])
        other, _, _ = worker.client.train(weights, {"round": 2, "local_epochs": 2})
        assert any(not np.array_equal(other[k], trained[k]) for k in trained)
        # Training does not change what the replica serves.
        np.testing.assert_array_equal(worker.client.get_weights()["fc1.weight"], weights["fc1.weight"])


def test_fedprox_keeps_the_update_near_the_global_weights(data, tmp_path):
    out, _ = data
    with start(tmp_path, str(out / "node-0")) as worker:
        weights = worker.client.get_weights()

        def distance(config):
            trained, _, _ = worker.client.train(weights, {"round": 1, "local_epochs": 5, **config})
            return np.sqrt(sum(np.sum((trained[k] - weights[k]) ** 2) for k in weights))

        assert distance({"proximal_mu": 1.0}) < 0.8 * distance({})


def test_training_without_a_dataset_says_how_to_give_one(tmp_path):
    with start(tmp_path) as worker:
        for call in (worker.client.train, worker.client.evaluate):
            with pytest.raises(WorkerError, match="ctx.data_dir is not set; start the agent with --dataset digits=DIR"):
                call(worker.client.get_weights(), {})


def test_wrong_weights_are_refused_by_name(data, tmp_path):
    out, _ = data
    with start(tmp_path, str(out / "node-0")) as worker:
        weights = worker.client.get_weights()
        weights["fc3.weight"] = np.zeros((2, 2), dtype=np.float32)
        with pytest.raises(WorkerError, match="fc3.weight"):
            worker.client.train(weights, {})


def test_fedavg_lands_within_two_points_of_central_training(data):
    out, _ = data
    result = simulate.simulate(str(out), rounds=10, local_epochs=20)
    assert result["accuracy_per_round"][-1] > result["accuracy_per_round"][0]
    assert result["federated_accuracy"] >= result["central_accuracy"] - 0.02, result
    assert result["federated_accuracy"] > 0.93, result
    # central.py, as the end-to-end test runs it, computes the same baseline.
    central = json.loads(
        subprocess.run(
            [sys.executable, str(EXAMPLE / "central.py"), "--data", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert central["accuracy"] == pytest.approx(result["central_accuracy"])
