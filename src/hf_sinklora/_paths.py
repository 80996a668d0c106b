"""Where the package keeps files between runs (the user cache)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$HF_SINKLORA_CACHE`` or ``$XDG_CACHE_HOME/hf_sinklora`` (``~/.cache/hf_sinklora``)."""
    if os.environ.get("HF_SINKLORA_CACHE"):
        return Path(os.environ["HF_SINKLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_sinklora"
