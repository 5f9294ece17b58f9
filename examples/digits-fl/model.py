"""A digits classifier (scikit-learn's 8x8 digits) as a mycel component that serves
and trains: a one-hidden-layer numpy network whose weights live in
weights/model.safetensors. `train` and `evaluate` read the node's dataset from
ctx.data_dir (train.npz and test.npz, arrays x [n, 64] and y [n]), so the same source
serves the model and trains it where the data is."""

import os
from typing import Dict, Tuple

import numpy as np
from safetensors.numpy import load_file

Weights = Dict[str, np.ndarray]

HIDDEN = 64
CLASSES = 10
LEARNING_RATE = 0.1
BATCH_SIZE = 16


def init_weights(seed: int = 0) -> Weights:
    """Seeded initial weights (He initialization), float32."""
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": (rng.standard_normal((64, HIDDEN)) * np.sqrt(2 / 64)).astype(np.float32),
        "fc1.bias": np.zeros(HIDDEN, dtype=np.float32),
        "fc2.weight": (rng.standard_normal((HIDDEN, CLASSES)) * np.sqrt(2 / HIDDEN)).astype(np.float32),
        "fc2.bias": np.zeros(CLASSES, dtype=np.float32),
    }


def forward(w: Weights, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Hidden activations and class probabilities for pixels `x` (0..16)."""
    hidden = np.maximum(0.0, (x / 16.0) @ w["fc1.weight"] + w["fc1.bias"])
    logits = hidden @ w["fc2.weight"] + w["fc2.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def loss_and_accuracy(w: Weights, x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    _, probabilities = forward(w, x)
    loss = -np.mean(np.log(probabilities[np.arange(len(y)), y] + 1e-12))
    return float(loss), float(np.mean(probabilities.argmax(axis=1) == y))


def sgd(w: Weights, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, mu: float = 0.0) -> Weights:
    """Mini-batch SGD on softmax cross-entropy; with `mu`, FedProx's proximal term
    mu/2·||w − w_start||² keeps the result near the weights it started from."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    start = {k: v.copy() for k, v in w.items()}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(y), BATCH_SIZE):
            batch = order[at : at + BATCH_SIZE]
            xb, yb = x[batch] / 16.0, y[batch]
            hidden = np.maximum(0.0, xb @ w["fc1.weight"] + w["fc1.bias"])
            logits = hidden @ w["fc2.weight"] + w["fc2.bias"]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1.0
            d_logits = p / len(yb)
            d_hidden = (d_logits @ w["fc2.weight"].T) * (hidden > 0)
            grads = {
                "fc2.weight": hidden.T @ d_logits,
                "fc2.bias": d_logits.sum(axis=0),
                "fc1.weight": xb.T @ d_hidden,
                "fc1.bias": d_hidden.sum(axis=0),
            }
            for name, grad in grads.items():
                if mu:
                    grad = grad + mu * (w[name] - start[name])
                w[name] -= LEARNING_RATE * grad
    return {k: v.astype(np.float32) for k, v in w.items()}


def load_split(data_dir: str, name: str) -> Tuple[np.ndarray, np.ndarray]:
    path = os.path.join(data_dir, f"{name}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; prepare node datasets with split.py")
    with np.load(path) as data:
        return data["x"].astype(np.float64), data["y"].astype(np.int64)


class Digits:
    """Serves predictions and, on a node with a dataset, trains and evaluates."""

    def __init__(self, ctx) -> None:
        self.weights = load_file(ctx.weights["model"])
        self.data_dir = ctx.data_dir

    def _data(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        if self.data_dir is None:
            raise RuntimeError(
                "digits-fl trains on a node dataset: ctx.data_dir is not set; "
                "start the agent with --dataset digits=DIR"
            )
        return load_split(self.data_dir, name)

    def predict(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        _, probabilities = forward(self.weights, inputs["pixels"].astype(np.float32))
        return {
            "probabilities": probabilities.astype(np.float32),
            "label": probabilities.argmax(axis=1).astype(np.int64),
        }

    def get_weights(self) -> Weights:
        return self.weights

    def train(self, weights: Weights, config: dict) -> Tuple[Weights, int, dict]:
        x, y = self._data("train")
        epochs = int(config.get("local_epochs", 1))
        seed = int(config.get("round", 0)) * 1000 + len(y)
        trained = sgd(weights, x, y, epochs, seed, float(config.get("proximal_mu") or 0.0))
        loss, accuracy = loss_and_accuracy(trained, x, y)
        return trained, len(y), {"loss": loss, "accuracy": accuracy}

    def evaluate(self, weights: Weights, config: dict) -> Tuple[float, int, dict]:
        x, y = self._data("test")
        loss, accuracy = loss_and_accuracy(weights, x, y)
        return loss, len(y), {"accuracy": accuracy}
