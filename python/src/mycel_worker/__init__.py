"""mycel's worker runtime: serves a component's model class to the agent over a Unix socket."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Context", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that `python -m mycel_worker` imports nothing before
    # __main__ has fixed sys.path.
    if name == "Context":
        from .context import Context

        return Context
    raise AttributeError(f"module 'mycel_worker' has no attribute {name!r}")
