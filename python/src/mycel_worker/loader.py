"""Resolves a component's `module:Class` entrypoint and builds the model."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence, Tuple

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class LoadError(Exception):
    """The model could not be imported or constructed."""

    def __init__(self, message: str, traceback_text: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback_text


def parse_entrypoint(entrypoint: str) -> Tuple[str, str]:
    """("package.module", "Class") from "package.module:Class"."""
    module_name, sep, class_name = entrypoint.partition(":")
    valid = (
        sep == ":"
        and all(part.isidentifier() for part in module_name.split("."))
        and class_name.isidentifier()
    )
    if not valid:
        raise LoadError(
            f"entrypoint {entrypoint!r} is malformed: expected 'module:Class', "
            "e.g. 'model:ResNet50'"
        )
    return module_name, class_name


def import_entrypoint(root: Path, entrypoint: str, dependencies: Sequence[Path] = ()) -> Any:
    """The class named by `entrypoint`, importing its module with `root` first on sys.path
    and the `dependencies`' directories right after it."""
    module_name, class_name = parse_entrypoint(entrypoint)
    # The component's own files win a name clash, then its dependencies' (nearest
    # first), then the environment's packages.
    wanted = [str(root), *(str(d) for d in dependencies)]
    if sys.path[: len(wanted)] != wanted:
        sys.path[:] = wanted + [p for p in sys.path if p not in wanted]
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise LoadError(f"no module '{module_name}' in {root} (entrypoint '{entrypoint}')") from None
        raise LoadError(
            f"importing module '{module_name}' failed: {describe(e)}", user_traceback(e)
        ) from None
    except Exception as e:
        raise LoadError(
            f"importing module '{module_name}' failed: {describe(e)}", user_traceback(e)
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        outside = _outside_hint(module, root)
        fix = "" if outside else _classes_hint(module, module_name)
        raise LoadError(f"module '{module_name}' has no class '{class_name}'{outside}{fix}")
    if not callable(cls):
        raise LoadError(f"entrypoint '{entrypoint}' names a {type(cls).__name__}, not a class")
    return cls


def load_model(root: Path, entrypoint: str, ctx: Any) -> Any:
    """Imports the entrypoint's class and returns `Class(ctx)`; the directories in
    `ctx.dependencies` are importable too."""
    dependencies = list(getattr(ctx, "dependencies", {}).values())
    cls = import_entrypoint(root, entrypoint, dependencies)
    try:
        return cls(ctx)
    except Exception as e:
        name = getattr(cls, "__name__", entrypoint)
        raise LoadError(f"{name}.__init__ failed: {describe(e)}", user_traceback(e)) from None


def describe(exc: BaseException) -> str:
    """`ExcType: message`, the way Python's last traceback line says it."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc`, starting at the first frame outside this runtime."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _classes_hint(module: ModuleType, module_name: str) -> str:
    # The classes the module itself defines (not the ones it imports), and the fix.
    defined = sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__
    )
    if not defined:
        return "; it defines no class: add one, or point [component] entrypoint in mycel.toml at the module that has it"
    return (
        f"; it defines {', '.join(defined)}: set [component] entrypoint in mycel.toml to "
        f"'{module_name}:{defined[0] if len(defined) == 1 else 'Class'}' and push again"
    )


def _outside_hint(module: ModuleType, root: Path) -> str:
    # A component module named like an already-imported one ("json", "numpy") is
    # shadowed by it; say so instead of leaving the user to wonder where the class went.
    location: Optional[str] = getattr(module, "__file__", None)
    if location is None or Path(location).resolve().is_relative_to(root):
        return ""
    return f" (that module was loaded from {location}, not from the version directory)"
