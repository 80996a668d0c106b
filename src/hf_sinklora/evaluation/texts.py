"""Evaluation text from disk or from ``datasets``: plain files, directories, dataset ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _column(dataset, source: str, text_column: str) -> list[str]:
    if text_column not in dataset.column_names:
        raise ValueError(
            f"text_column {text_column!r} is not a column of {source}; available columns: {dataset.column_names}"
        )
    return [t for t in dataset[text_column] if isinstance(t, str)]


def _from_dataset(source: str, split: str, text_column: str, config_name: str | None) -> list[str]:
    import datasets  # heavy import: only when a dataset is asked for

    path = Path(source)
    if path.is_dir() and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(source, name=config_name, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} is not in {source}; available splits: {list(loaded)}")
        loaded = loaded[split]
    return _column(loaded, source, text_column)


def load_texts(
    sources: str | Sequence[str],
    *,
    split: str = "test",
    text_column: str = "text",
    dataset_config: str | None = None,
) -> list[str]:
    """Reads evaluation documents.

    Each source is, in this order of checks:

    - a file: read as one UTF-8 document;
    - a directory holding ``*.txt`` files (searched recursively): each file one document,
      in sorted path order;
    - a directory saved by ``datasets`` (``save_to_disk``), or any other directory or name:
      loaded with ``datasets`` (``load_from_disk`` / ``load_dataset(source, dataset_config,
      split=split)``), each row's ``text_column`` one document.

    Raises:
        ValueError: no sources, a missing ``text_column`` or ``split``, or no text at all.
    """
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    if not sources:
        raise ValueError("data must name at least one file, directory or dataset")
    texts: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        elif path.is_dir() and not _is_saved_dataset(path) and any(path.rglob("*.txt")):
            files = sorted(path.rglob("*.txt"))
            texts.extend(f.read_text(encoding="utf-8", errors="replace") for f in files)
            logger.info("%s: %d text files", source, len(files))
        else:
            rows = _from_dataset(source, split, text_column, dataset_config)
            texts.extend(rows)
            logger.info("%s: %d rows of %r (split %r)", source, len(rows), text_column, split)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"data {list(sources)} holds no non-empty text")
    return texts
