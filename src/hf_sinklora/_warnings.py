"""Warnings and log lines the stack raises on its own behalf, which users can do nothing about."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def without_known_deprecations() -> Iterator[None]:
    """peft and TRL read ``is_gradient_checkpointing``, which transformers deprecates (FutureWarning
    on every wrap and load): not the user's to fix, so silenced around those calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Raises logger ``name``'s level for the block: for a library's own lines about what the
    caller reports better itself (one clear error instead)."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
