"""The Context handed to a model's __init__: where its files, weights, config and data are."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, Optional


class ContextError(ValueError):
    """A worker argument that cannot become a Context."""


@dataclass
class Context:
    """What the model's constructor receives as `ctx`."""

    path: Path
    """The version directory: the component's source and weights, read-only."""
    weights: Dict[str, str] = field(default_factory=dict)
    """Absolute weight file paths keyed by their path in the component
    ("weights/model.safetensors") and, when no other file shares it, by stem ("model")."""
    config: Dict[str, Any] = field(default_factory=dict)
    """Deployment configuration, from --config."""
    data_dir: Optional[str] = None
    """A node-local data directory (training data for federated learning), if any."""
    dependencies: Dict[str, Path] = field(default_factory=dict)
    """The directory of each component this one depends on, directly or not, by name,
    nearest first. Their modules are importable by their own names; this is for their
    other files."""


def build_context(
    path: str,
    weights: Iterable[str] = (),
    config_json: Optional[str] = None,
    data_dir: Optional[str] = None,
    dependencies: Iterable[str] = (),
) -> Context:
    """A Context from the worker's command-line arguments."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise ContextError(f"version directory {path} does not exist or is not a directory")
    return Context(
        path=root,
        weights=weights_map(root, weights),
        config=parse_config(config_json),
        data_dir=os.path.abspath(data_dir) if data_dir is not None else None,
        dependencies=dependency_map(dependencies),
    )


def dependency_map(arguments: Iterable[str]) -> Dict[str, Path]:
    """name -> directory from `--dependency NAME=DIR` arguments, in the order given."""
    dependencies: Dict[str, Path] = {}
    for argument in arguments:
        name, sep, directory = argument.partition("=")
        if not sep or not name or not directory:
            raise ContextError(f"--dependency {argument!r} is malformed: expected NAME=DIR")
        if name in dependencies:
            raise ContextError(f"--dependency {name!r} is given twice: expected one directory per component")
        resolved = Path(directory).resolve()
        if not resolved.is_dir():
            raise ContextError(
                f"--dependency {name}: directory {directory} does not exist or is not a directory"
            )
        dependencies[name] = resolved
    return dependencies


def weights_map(root: Path, relative_paths: Iterable[str]) -> Dict[str, str]:
    """Relative weight path -> absolute path, plus stem -> absolute path where unambiguous."""
    by_path: Dict[str, str] = {}
    for relative in relative_paths:
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise ContextError(
                f"--weights {relative!r} must be a relative path inside the version directory"
            )
        by_path[relative] = str(root.joinpath(*parts))
    stems: Dict[str, list] = {}
    for relative, absolute in by_path.items():
        stems.setdefault(PurePosixPath(relative).stem, []).append(absolute)
    weights = dict(by_path)
    for stem, paths in stems.items():
        # A stem that two files share, or that is itself some file's full path, would be
        # a guess; leave it out so lookups by it fail loudly.
        if len(paths) == 1 and stem not in by_path:
            weights[stem] = paths[0]
    return weights


def parse_config(config_json: Optional[str]) -> Dict[str, Any]:
    """The --config JSON object; {} when absent."""
    if config_json is None or config_json == "":
        return {}
    try:
        config = json.loads(config_json)
    except ValueError as e:
        raise ContextError(f"--config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ContextError(f"--config must be a JSON object, got {type(config).__name__}")
    return config
