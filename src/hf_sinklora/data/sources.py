"""The one place that reads data: files, directories, saved datasets and ``datasets`` hub ids.

Two views of the same sources:

- :func:`load_records` gives a ``datasets.Dataset`` of records (SFT data: JSON/JSONL/CSV/
  Parquet files, a directory of them, a saved dataset or a hub id);
- :func:`load_texts` gives plain documents (evaluation and pretraining text: ``.txt`` files
  and directories of them read as whole documents, anything else through
  :func:`load_records` and its text column).

Everything else in the package asks these two; nothing else opens a data file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._warnings import quiet_logger

logger = logging.getLogger(__name__)

RECORD_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
_GUTENBERG_START, _GUTENBERG_END = "*** START OF", "*** END OF"


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def looks_like_path(source: str | Path) -> bool:
    """True for names that can only mean a local path (``./x``, ``/x``, ``x.jsonl`` ...), never a hub id."""
    return str(source).startswith((".", "/", "~")) or Path(str(source)).suffix.lower() in RECORD_FILE_BUILDERS


def _select_split(loaded: Any, source: str, split: str) -> Any:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"split {split!r} is not in {source}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _json_error(path: Path) -> str | None:
    """Where a JSON / JSON Lines file stops being valid: ``"line N: reason"``, or None if it is valid."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None  # one JSON document
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as error:
                return f"line {number}: {error.msg}"
    return None


def _load_files(builder: str, files: list[Path], **load_kwargs: Any) -> Any:
    """``datasets.load_dataset`` on local files; a broken JSON file is reported by name and line."""
    import datasets

    try:
        # its JSON builder logs each parse failure at ERROR ("... in row 1") before raising: this
        # function reports the file and line itself, so those lines are only noise
        with quiet_logger("datasets.packaged_modules.json.json"):
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **load_kwargs)
    except Exception as error:  # datasets wraps parser errors in its own types
        if builder == "json":
            for file in files:
                where = _json_error(file)
                if where:
                    raise ValueError(f"dataset file {file}, {where}") from None
        raise ValueError(f"dataset files {[str(f) for f in files]} could not be read: {error}") from None


def load_records(source: str | Path, *, split: str = "train", **load_kwargs: Any) -> Any:
    """Reads ``source`` into a ``datasets.Dataset``.

    Args:
        source: a ``.json``/``.jsonl``/``.csv``/``.parquet``/``.txt`` file (one record per
            line for text), a directory of such files (one kind), a directory written by
            ``save_to_disk``, or a ``datasets`` hub id.
        split: the split taken from a ``DatasetDict`` or a hub id (local files are one split).
        **load_kwargs: passed to ``datasets.load_dataset`` (``name``, ``revision`` ...).

    Raises:
        ValueError: a missing path, an unknown or mixed file type, an empty file or a missing split.
    """
    import datasets  # heavy import: only when records are asked for

    path = Path(source)
    if path.is_file():
        builder = RECORD_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"dataset file {path} has suffix {path.suffix!r}; allowed: {sorted(RECORD_FILE_BUILDERS)}")
        if path.stat().st_size == 0:
            raise ValueError(f"dataset file {path} is empty: no records")
        return _load_files(builder, [path], **load_kwargs)
    if path.is_dir():
        if is_saved_dataset(path):
            return _select_split(datasets.load_from_disk(str(path)), str(source), split)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in RECORD_FILE_BUILDERS)
        if not files:
            raise ValueError(f"dataset directory {path} holds no {sorted(RECORD_FILE_BUILDERS)} files")
        builders = {RECORD_FILE_BUILDERS[p.suffix.lower()] for p in files}
        if len(builders) > 1:
            raise ValueError(f"dataset directory {path} mixes file types {sorted(builders)}; use one kind")
        return _load_files(builders.pop(), files, **load_kwargs)
    if looks_like_path(source):
        raise ValueError(f"dataset path {source} does not exist")
    logger.info("loading dataset %s (split %s) with datasets.load_dataset", source, split)
    return _select_split(datasets.load_dataset(str(source), split=split, **load_kwargs), str(source), split)


def _read_document(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def load_texts(
    sources: str | Path | Sequence[str | Path],
    *,
    split: str = "test",
    text_column: str = "text",
    dataset_config: str | None = None,
) -> list[str]:
    """Reads documents.

    Each source is, in this order of checks:

    - a ``.txt`` file, or any file that is not a record file: read as one UTF-8 document;
    - a directory holding ``*.txt`` files (searched recursively, not a saved dataset): each
      file one document, in sorted path order;
    - anything else (a record file, a saved dataset, a hub id): :func:`load_records`, each
      row's ``text_column`` one document.

    Raises:
        ValueError: no sources, a missing ``text_column`` or ``split``, or no text at all.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ValueError("data must name at least one file, directory or dataset")
    texts: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix.lower() not in set(RECORD_FILE_BUILDERS) - {".txt"}:
            texts.append(_read_document(path))
        elif path.is_dir() and not is_saved_dataset(path) and any(path.rglob("*.txt")):
            files = sorted(path.rglob("*.txt"))
            texts.extend(_read_document(f) for f in files)
            logger.info("%s: %d text files", source, len(files))
        else:
            name = {"name": dataset_config} if dataset_config else {}
            records = load_records(source, split=split, **name)
            if text_column not in records.column_names:
                raise ValueError(
                    f"text_column {text_column!r} is not a column of {source}; available columns: {records.column_names}"
                )
            rows = [t for t in records[text_column] if isinstance(t, str)]
            texts.extend(rows)
            logger.info("%s: %d rows of %r (split %r)", source, len(rows), text_column, split)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"data {[str(s) for s in sources]} holds no non-empty text")
    return texts


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (the
    whole text when the markers are absent), with ``\\r\\n`` turned into ``\\n`` and no BOM."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.find(_GUTENBERG_START)
    if start >= 0:
        line_end = text.find("\n", start)
        text = text[line_end + 1 :] if line_end >= 0 else ""
    end = text.find(_GUTENBERG_END)
    if end >= 0:
        text = text[:end]
    return text.strip()


def load_books(sources: Sequence[str | Path], *, split: str = "train", text_column: str = "text") -> list[str]:
    """Documents from :func:`load_texts`, each stripped of Gutenberg boilerplate (PG19 rows
    and plain files alike)."""
    texts = [strip_gutenberg(text) for text in load_texts(list(sources), split=split, text_column=text_column)]
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"no text in {[str(s) for s in sources]}")
    return texts
