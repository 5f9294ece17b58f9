"""Writes torchvision's pretrained ImageNet weights for one of the torchvision examples
as the safetensors file its manifest lists, and lists it there, so that

    python examples/resnet50/export_weights.py
    mycel push examples/resnet50 --deploy --wait

serves real predictions. The weights are downloaded once, into torchvision's cache; on
a machine that cannot download them, fetch them elsewhere and pass
`--state-dict FILE` (a `torch.save(model.state_dict(), FILE)` of torchvision's model).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import torchvision.models
from safetensors.torch import save_file

# component directory: (builder, weights enum, entry)
MODELS = {
    "resnet50": ("resnet50", "ResNet50_Weights", "IMAGENET1K_V2"),
    "mobilenet-v2": ("mobilenet_v2", "MobileNet_V2_Weights", "IMAGENET1K_V2"),
    "inception-v3": ("inception_v3", "Inception_V3_Weights", "IMAGENET1K_V1"),
}


def export(component: Path, argv: list[str] | None = None) -> Path:
    name = component.name
    builder, enum, entry = MODELS[name]
    parser = argparse.ArgumentParser(description=f"Export torchvision's {enum}.{entry} for {name}.")
    parser.add_argument("--state-dict", type=Path, help="torchvision's weights, already downloaded (torch.save of a state_dict)")
    args = parser.parse_args(argv)

    source = f"torchvision {enum}.{entry}"
    if args.state_dict:
        state = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    else:
        weights = getattr(torchvision.models, enum)[entry]
        state = getattr(torchvision.models, builder)(weights=weights).state_dict()
    metadata = {"source": source}
    if name == "inception-v3":
        # The example serves without the auxiliary classifier, which only training
        # uses; torchvision's weights expect their own input transform.
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        metadata["transform_input"] = "true"

    relative = f"weights/{name}.safetensors"
    out = component / relative
    out.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata=metadata)
    listed = list_in_manifest(component / "mycel.toml", relative)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {source})")
    print(f"{'listed it in' if listed else 'already listed in'} {component / 'mycel.toml'} [weights]")
    print(f"serve it with: mycel push {component} --deploy --wait")
    return out


def list_in_manifest(manifest: Path, relative: str) -> bool:
    """Lists `relative` under [weights] in the manifest; False if it already was."""
    text = manifest.read_text()
    if re.search(rf'^files\s*=\s*\[[^\]]*"{re.escape(relative)}"', text, re.MULTILINE) and re.search(r"^\[weights\]", text, re.MULTILINE):
        return False
    if re.search(r"^\[weights\]", text, re.MULTILINE):
        raise SystemExit(f"{manifest} has a [weights] table without {relative!r}: add it to its files by hand")
    block = f'[weights]\nfiles = ["{relative}"]\n'
    commented = re.compile(r"^# \[weights\]\n# files = \[.*\]\n", re.MULTILINE)
    text = commented.sub(block, text, count=1) if commented.search(text) else text.rstrip("\n") + "\n\n" + block
    manifest.write_text(text)
    return True
