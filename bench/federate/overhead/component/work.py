"""The fixed training work both systems' clients do: sleep, then nudge every weight.
`train_ms` in the metrics is the client's own time for it, measured in the client."""

import time

import numpy as np


def train_work(weights, train_ms):
    started = time.perf_counter()
    time.sleep(train_ms / 1000.0)
    out = {name: (value + np.float32(1e-3)).astype(value.dtype) for name, value in weights.items()}
    return out, 1, {"train_ms": (time.perf_counter() - started) * 1000.0}
