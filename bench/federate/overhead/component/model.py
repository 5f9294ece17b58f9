"""The benchmark's client for mycel: the same work as flower_overhead.py's client."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from work import train_work  # noqa: E402


class Overhead:
    def __init__(self, ctx):
        self.train_ms = float(os.environ.get("TRAIN_MS", "200"))

    def train(self, weights, config):
        return train_work(weights, float(config.get("train_ms", self.train_ms)))

    def evaluate(self, weights, config):
        return 0.0, 1, {}
