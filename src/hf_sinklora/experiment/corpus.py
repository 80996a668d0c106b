"""Text for experiments: Project Gutenberg boilerplate removed, line endings normalised."""

from __future__ import annotations

from collections.abc import Sequence

from ..evaluation.texts import load_texts

_START, _END = "*** START OF", "*** END OF"


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (the
    whole text when the markers are absent), with ``\\r\\n`` turned into ``\\n`` and no BOM."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.find(_START)
    if start >= 0:
        line_end = text.find("\n", start)
        text = text[line_end + 1 :] if line_end >= 0 else ""
    end = text.find(_END)
    if end >= 0:
        text = text[:end]
    return text.strip()


def load_books(sources: Sequence[str], *, split: str = "train", text_column: str = "text") -> list[str]:
    """Documents from files, directories, saved datasets or hub ids (see ``load_texts``),
    each stripped of Gutenberg boilerplate (PG19 rows and plain files alike)."""
    texts = [strip_gutenberg(text) for text in load_texts(list(sources), split=split, text_column=text_column)]
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"no text in {list(sources)}")
    return texts
