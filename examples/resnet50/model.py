"""ResNet50 built from torchvision's model source: 1000 ImageNet classes.

Takes `image` as FP32 [N, 3, 224, 224] already normalized, or as UINT8 pixels
[N, 224, 224, 3] that it normalizes itself; returns `probabilities`, `class`, its ImageNet name as `label`, and `weights`: which
weights answered (random unless a safetensors file is listed in mycel.toml).
"""

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torchvision.models import ResNet50_Weights, resnet50

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
# ImageNet's class names, from torchvision's weight metadata (nothing is downloaded).
CATEGORIES = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]


class ResNet50:
    def __init__(self, ctx):
        # The same random weights in every replica, so every copy answers alike.
        torch.manual_seed(0)
        self.model = resnet50(weights=None)
        files = sorted({p for p in ctx.weights.values() if p.endswith(".safetensors")})
        if len(files) > 1:
            raise ValueError(f"expected at most one .safetensors weights file, got {files}")
        self.weights = "random (seed 0): untrained, its answers mean nothing"
        if files:
            self.model.load_state_dict(load_file(files[0]), strict=True)
            self.weights = describe_weights(files[0])
        self.model.eval()

    def predict(self, inputs):
        image = inputs["image"]
        if image.dtype == np.uint8:
            image = (image.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - MEAN) / STD
        if image.ndim != 4 or image.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(
                f"image must be FP32 [N, 3, {SIZE}, {SIZE}] or UINT8 [N, {SIZE}, {SIZE}, 3], "
                f"got {image.dtype} {list(image.shape)}"
            )
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
            probabilities = torch.softmax(logits, dim=1)
        classes = probabilities.argmax(dim=1).numpy().astype(np.int64)
        return {
            "probabilities": probabilities.numpy(),
            "class": classes,
            "label": np.array([CATEGORIES[c] for c in classes], dtype=object),
            "weights": np.array([self.weights] * len(classes), dtype=object),
        }


def metadata(path):
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def describe_weights(path):
    # export_weights.py records where pretrained weights came from; other files are
    # whatever their author trained.
    source = metadata(path).get("source")
    return f"pretrained: {source}" if source else f"from {Path(path).name}"
