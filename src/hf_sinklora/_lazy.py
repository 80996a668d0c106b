"""Module attributes imported on first use (PEP 562), so ``import hf_sinklora`` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``table``'s names from their modules on first access.

    Args:
        package: the module's ``__name__`` (relative module names resolve against it).
        table: public name -> relative module that defines it, e.g. ``{"load_model": ".hub.loading"}``.
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name], package), name)

    return __getattr__
