"""The torchvision examples, each run in a real worker process: random weights by
default, a given safetensors file loaded exactly, and both input layouts accepted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models
from safetensors.torch import save_file

from mycel_worker.client import WorkerError, start_worker

EXAMPLES = Path(__file__).resolve().parent.parent
CATEGORIES = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
MODELS = [
    # directory, entrypoint, input size
    ("mobilenet-v2", "model:MobileNetV2", 224),
    ("resnet50", "model:ResNet50", 224),
    ("inception-v3", "model:InceptionV3", 299),
]


def start(path: Path, entrypoint: str, tmp_path: Path, **kwargs):
    log = open(tmp_path / "worker.log", "a")
    process = start_worker(path, entrypoint, stdout=log, stderr=log, connect_timeout=120, io_timeout=120, **kwargs)
    process.client.read_ready()
    return process


@pytest.mark.parametrize("directory,entrypoint,size", MODELS)
def test_classifies_pixels_and_normalized_images(directory, entrypoint, size, tmp_path):
    with start(EXAMPLES / directory, entrypoint, tmp_path) as worker:
        pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        out = worker.client.predict({"image": pixels})
        assert out["probabilities"].shape == (2, 1000)
        assert out["probabilities"].dtype == np.float32
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-4)
        assert out["class"].dtype == np.int64
        np.testing.assert_array_equal(out["class"], out["probabilities"].argmax(axis=1))
        # Names beside the indices, and a word on what the answers are worth.
        assert [label.decode() for label in out["label"]] == [CATEGORIES[c] for c in out["class"]]
        assert all(w.decode().startswith("random (seed 0): untrained") for w in out["weights"])

        normalized = np.zeros((1, 3, size, size), dtype=np.float32)
        assert worker.client.predict({"image": normalized})["probabilities"].shape == (1, 1000)

        with pytest.raises(WorkerError, match=rf"image must be FP32 \[N, 3, {size}, {size}\]"):
            worker.client.predict({"image": np.zeros((1, 3, 32, 32), dtype=np.float32)})
        # A bad request does not take the worker down.
        worker.client.ping()


def test_mobilenet_loads_a_given_safetensors_file(tmp_path):
    component = tmp_path / "mobilenet-v2"
    shutil.copytree(EXAMPLES / "mobilenet-v2", component)
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    # Weights unlike the example's own seeded ones, in every layer.
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    (component / "weights").mkdir()
    save_file(reference.state_dict(), str(component / "weights" / "mobilenet-v2.safetensors"))

    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(reference(torch.from_numpy(image)), dim=1).numpy()

    with start(component, "model:MobileNetV2", tmp_path, weights=["weights/mobilenet-v2.safetensors"]) as worker:
        given = worker.client.predict({"image": image})["probabilities"]
    with start(component, "model:MobileNetV2", tmp_path) as worker:
        random = worker.client.predict({"image": image})["probabilities"]

    # Fresh weights give near-uniform probabilities; compare them in log space.
    np.testing.assert_allclose(np.log(given), np.log(expected), atol=1e-4)
    assert np.abs(np.log(random) - np.log(expected)).max() > 0.05


@pytest.mark.parametrize(
    "directory,entrypoint,size,build,enum",
    [
        ("mobilenet-v2", "model:MobileNetV2", 224, lambda: torchvision.models.mobilenet_v2(weights=None), "MobileNet_V2_Weights.IMAGENET1K_V2"),
        (
            "inception-v3",
            "model:InceptionV3",
            299,
            # As torchvision builds it for its pretrained weights.
            lambda: torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False),
            "Inception_V3_Weights.IMAGENET1K_V1",
        ),
    ],
)
def test_export_weights_writes_lists_and_serves_them(directory, entrypoint, size, build, enum, tmp_path):
    # The exporter run as a user would, on weights this test makes (no download).
    component = tmp_path / directory
    shutil.copytree(EXAMPLES / directory, component)
    shutil.copy(EXAMPLES / "torchvision_weights.py", tmp_path)
    torch.manual_seed(2)
    reference = build().eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    state = tmp_path / "state.pt"
    torch.save(reference.state_dict(), state)
    done = subprocess.run(
        [sys.executable, str(component / "export_weights.py"), "--state-dict", str(state)],
        capture_output=True, text=True, check=True,
    )
    relative = f"weights/{directory}.safetensors"
    assert f"mycel push {component} --deploy --wait" in done.stdout
    manifest = tomllib.loads((component / "mycel.toml").read_text())
    assert manifest["weights"]["files"] == [relative]
    # Running it again keeps the manifest as it is.
    subprocess.run([sys.executable, str(component / "export_weights.py"), "--state-dict", str(state)], check=True, capture_output=True)
    assert tomllib.loads((component / "mycel.toml").read_text()) == manifest

    image = np.random.default_rng(3).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(reference(torch.from_numpy(image)), dim=1).numpy()
    with start(component, entrypoint, tmp_path, weights=[relative]) as worker:
        out = worker.client.predict({"image": image})
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-3, atol=1e-6)
    assert out["weights"][0].decode() == f"pretrained: torchvision {enum}"
    assert out["label"][0].decode() == CATEGORIES[int(expected.argmax())]
