"""Saving a model directory so that a killed save never leaves something that loads half-written.

Every file of a save is written into a hidden staging folder inside the destination, then moved
into place with ``os.replace`` (atomic per file). The files that make a directory loadable
(``config.json``, ``adapter_config.json``) are removed from the destination first and moved in
last, so at every instant the destination either holds a complete save or does not load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".saving-"
LOADABLE_MARKERS = ("config.json", "adapter_config.json")  # moved in last, in this order


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish(staging: Path, destination: Path) -> None:
    """Moves every entry of ``staging`` into ``destination`` (loadable markers last); removes ``staging``."""
    names = sorted(entry.name for entry in staging.iterdir())
    markers = [name for name in LOADABLE_MARKERS if name in names]
    if markers:  # the old save stops being loadable before any of its files is replaced
        for name in reversed(LOADABLE_MARKERS):
            (destination / name).unlink(missing_ok=True)
    for name in [n for n in names if n not in markers] + markers:
        target = destination / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace``: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_save(destination: str | Path) -> Iterator[Path]:
    """Yields an empty folder to save into; on success its files replace those in ``destination``.

    Leftovers of earlier killed saves (hidden ``.saving-*`` folders) are removed first. On an
    exception the staging folder is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for leftover in destination.glob(STAGING_PREFIX + "*"):
        logger.info("removing %s, left by an interrupted save", leftover)
        _remove(leftover)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=destination))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, destination)
