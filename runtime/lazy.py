"""The one lazy-export pattern of tl's packages: names re-exported from the module they live in, imported on first use.

Importing a package (``tl.runtime``, ``tl.train``, ...) must stay cheap and torch-free, so
``tl --help`` and an edge box without torch can import it; the heavy module behind a name
loads only when that name is used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that finds each name of ``homes`` in its module."""
    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
