"""Writes torchvision's pretrained weights for this example as the safetensors file its
manifest lists (see ../torchvision_weights.py): `python export_weights.py [--state-dict FILE]`."""

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent))

from torchvision_weights import export  # noqa: E402

if __name__ == "__main__":
    export(here)
