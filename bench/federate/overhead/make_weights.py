"""Writes component/weights/model.safetensors: PARAMS float32 values in one tensor."""

import os
import sys

import numpy as np
from safetensors.numpy import save_file

if __name__ == "__main__":
    params = int(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "component", "weights"), exist_ok=True)
    weights = {"w": np.random.default_rng(0).standard_normal(params).astype(np.float32)}
    save_file(weights, os.path.join(here, "component", "weights", "model.safetensors"))
