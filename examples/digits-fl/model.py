"""A digits classifier (scikit-learn's 8x8 digits) as a mycel component that serves
and trains: a one-hidden-layer numpy network (64 -> 64 -> 10, ReLU, softmax) whose
weights live in weights/model.safetensors.

`predict` serves. `train` and `evaluate` read the node's own dataset from ctx.data_dir
(train.npz and test.npz, arrays x float32 [n, 64] with pixels 0..16 and y int64 [n]),
so the same source serves the model and trains it where the data is. The training
defaults below are the ones examples/digits-fl/README.md measured: 10 rounds of
`LOCAL_EPOCHS` local epochs each."""

import os
import zlib
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from safetensors.numpy import load_file

Weights = Dict[str, np.ndarray]

INPUTS = 64
HIDDEN = 64
CLASSES = 10

# Training defaults; a federation can override each through its config
# (`mycel federate ... --local-epochs 20 --config lr=0.1 --config batch_size=16`).
LEARNING_RATE = 0.1
BATCH_SIZE = 16
LOCAL_EPOCHS = 20  # what README.md and the tests federate with; train's own default is 1
ROUNDS = 10

SHAPES = {
    "fc1.weight": (INPUTS, HIDDEN),
    "fc1.bias": (HIDDEN,),
    "fc2.weight": (HIDDEN, CLASSES),
    "fc2.bias": (CLASSES,),
}

NO_DATA = (
    "digits-fl trains on a node dataset: ctx.data_dir is not set; "
    "start the agent with --dataset digits=DIR"
)


def init_weights(seed: int = 0) -> Weights:
    """Seeded initial weights (He initialization, zero biases), float32."""
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": (rng.standard_normal(SHAPES["fc1.weight"]) * np.sqrt(2 / INPUTS)).astype(np.float32),
        "fc1.bias": np.zeros(SHAPES["fc1.bias"], dtype=np.float32),
        "fc2.weight": (rng.standard_normal(SHAPES["fc2.weight"]) * np.sqrt(2 / HIDDEN)).astype(np.float32),
        "fc2.bias": np.zeros(SHAPES["fc2.bias"], dtype=np.float32),
    }


def check_weights(weights: Mapping[str, np.ndarray]) -> None:
    """Raises ValueError unless `weights` are exactly this network's tensors."""
    if set(weights) != set(SHAPES):
        raise ValueError(f"digits-fl weights are {sorted(SHAPES)}, got {sorted(weights)}")
    for name, shape in SHAPES.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"digits-fl weight {name} has shape {shape}, got {tuple(weights[name].shape)}")


def forward(w: Mapping[str, np.ndarray], x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Hidden activations and class probabilities for pixels `x` [n, 64] (0..16)."""
    hidden = np.maximum(0.0, (x / 16.0) @ w["fc1.weight"] + w["fc1.bias"])
    logits = hidden @ w["fc2.weight"] + w["fc2.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return hidden, exp / exp.sum(axis=1, keepdims=True)


def loss_and_accuracy(w: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy of weights `w` on examples (x, y)."""
    _, probabilities = forward(w, x)
    loss = -np.mean(np.log(probabilities[np.arange(len(y)), y] + 1e-12))
    return float(loss), float(np.mean(probabilities.argmax(axis=1) == y))


def sgd(
    w: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    mu: float = 0.0,
    lr: float = LEARNING_RATE,
    batch_size: int = BATCH_SIZE,
) -> Weights:
    """Mini-batch SGD on softmax cross-entropy, in float64, returning float32 weights.

    Each epoch visits the examples in a fresh order drawn from `seed`. With `mu`,
    FedProx's proximal term mu/2·||w − w_start||² keeps the result near the weights
    it started from (the round's global weights)."""
    w = {k: np.asarray(v, dtype=np.float64).copy() for k, v in w.items()}
    start = {k: v.copy() for k, v in w.items()}
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(y), batch_size):
            batch = order[at : at + batch_size]
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
                w[name] -= lr * grad
    return {k: v.astype(np.float32) for k, v in w.items()}


def load_split(data_dir: str, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """`data_dir/name.npz` as (x float64 [n, 64], y int64 [n])."""
    path = os.path.join(data_dir, f"{name}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: a digits dataset directory holds train.npz and test.npz "
            "(make them with examples/digits-fl/split.py)"
        )
    with np.load(path) as data:
        return data["x"].astype(np.float64), data["y"].astype(np.int64)


def data_seed(x: np.ndarray, y: np.ndarray, round_: int, seed: int = 0) -> int:
    """A training seed from the round, a fingerprint of the data and an optional
    config seed: reruns reproduce, and nodes do not share a shuffling order."""
    fingerprint = zlib.crc32(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    fingerprint = zlib.crc32(np.ascontiguousarray(x, dtype=np.float64).tobytes(), fingerprint)
    return int(np.random.SeedSequence([round_, fingerprint, seed]).generate_state(1)[0])


class Digits:
    """Serves predictions and, on a node with a dataset, trains and evaluates."""

    def __init__(self, ctx: Any) -> None:
        self.weights: Weights = load_file(ctx.weights["model"])
        check_weights(self.weights)
        self.data_dir: Optional[str] = ctx.data_dir
        self.config: dict = dict(getattr(ctx, "config", None) or {})

    def _data(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        if self.data_dir is None:
            raise RuntimeError(NO_DATA)
        return load_split(self.data_dir, name)

    def predict(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """"pixels" float32 [N, 64] (0..16) -> "probabilities" [N, 10], "label" [N]."""
        pixels = np.asarray(inputs["pixels"], dtype=np.float32)
        if pixels.ndim != 2 or pixels.shape[1] != INPUTS:
            raise ValueError(f"pixels must be [N, {INPUTS}] (8x8 images, 0..16), got {list(pixels.shape)}")
        _, probabilities = forward(self.weights, pixels)
        return {
            "probabilities": probabilities.astype(np.float32),
            "label": probabilities.argmax(axis=1).astype(np.int64),
        }

    def get_weights(self) -> Weights:
        return dict(self.weights)

    def fit(self, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: Mapping[str, Any]) -> Weights:
        """Trains `weights` on (x, y) as `train` does, with config's `local_epochs`
        (default 1), `lr`, `batch_size`, `proximal_mu`, `round` and `seed`."""
        check_weights(weights)
        settings = {**self.config, **config}
        return sgd(
            weights,
            x,
            y,
            epochs=int(settings.get("local_epochs", 1)),
            seed=data_seed(x, y, int(settings.get("round", 0)), int(settings.get("seed", 0))),
            mu=float(settings.get("proximal_mu") or 0.0),
            lr=float(settings.get("lr", LEARNING_RATE)),
            batch_size=int(settings.get("batch_size", BATCH_SIZE)),
        )

    def train(self, weights: Weights, config: dict) -> Tuple[Weights, int, dict]:
        """Trains on this node's train.npz from `weights` (the round's global
        weights); returns the new weights (same names and shapes, float32), the
        example count and train metrics. The served weights stay as they are."""
        x, y = self._data("train")
        trained = self.fit(weights, x, y, config)
        loss, accuracy = loss_and_accuracy(trained, x, y)
        return trained, len(y), {"loss": loss, "accuracy": accuracy}

    def evaluate(self, weights: Weights, config: dict) -> Tuple[float, int, dict]:
        """Loss, example count and accuracy of `weights` on this node's test.npz."""
        check_weights(weights)
        x, y = self._data("test")
        loss, accuracy = loss_and_accuracy(weights, x, y)
        return loss, len(y), {"accuracy": accuracy}
