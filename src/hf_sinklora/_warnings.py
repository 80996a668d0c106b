"""Warnings the stack raises on its own behalf, which users can do nothing about."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def without_known_deprecations() -> Iterator[None]:
    """peft and TRL read ``is_gradient_checkpointing``, which transformers deprecates (FutureWarning
    on every wrap and load): not the user's to fix, so silenced around those calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
