"""Writes weights/model.safetensors, the digits network's seeded starting point."""

import os

from safetensors.numpy import save_file

from model import init_weights

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    save_file(init_weights(0), os.path.join(here, "weights", "model.safetensors"))
