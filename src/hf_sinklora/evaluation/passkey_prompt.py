"""The passkey-retrieval prompt of landmark attention / LongLoRA, fitted to a token length.

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. ...
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. The grass ...
    The pass key is 71432. Remember it. 71432 is the pass key.
    The grass is green. ...
    What is the pass key? The pass key is

The filler is whole sentences of the "grass is green" paragraph, cycled; the key line goes
after ``round(depth * N)`` of the ``N`` filler sentences, and ``N`` is the largest count for
which the whole prompt (special tokens included) fits in the requested number of tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

_FILLER_SENTENCES = re.findall(r"[^.]+\.", FILLER)
_FILLER_SENTENCES = [s.strip() for s in _FILLER_SENTENCES]


@dataclass(frozen=True)
class PasskeyPrompt:
    """One passkey prompt.

    Attributes:
        text: the prompt text.
        input_ids: its tokens (with the tokenizer's special tokens), ``len <= length``.
        key: the pass key digits.
        depth: requested depth in ``[0, 1]`` (0: key right after the task description,
            1: right before the question).
        length: requested length in tokens.
        filler_sentences: filler sentences in the prompt.
        sentences_before_key: how many of them precede the key line.
        key_token_index: index in ``input_ids`` of the first token of the key line.
    """

    text: str
    input_ids: list[int]
    key: str
    depth: float
    length: int
    filler_sentences: int
    sentences_before_key: int
    key_token_index: int


def check_depth(depth: float) -> float:
    if not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    return float(depth)


def _filler(first: int, count: int) -> str:
    return " ".join(_FILLER_SENTENCES[(first + i) % len(_FILLER_SENTENCES)] for i in range(count))


def passkey_text(num_sentences: int, depth: float, key: str) -> tuple[str, int, int]:
    """The prompt with ``num_sentences`` filler sentences.

    Returns:
        ``(text, sentences before the key, character offset of the key line)``.
    """
    before = round(check_depth(depth) * num_sentences)
    head = [TASK_DESCRIPTION] + ([_filler(0, before)] if before else [])
    tail = ([_filler(before, num_sentences - before)] if num_sentences > before else []) + [QUESTION]
    head_text = "\n".join(head) + "\n"
    return head_text + "\n".join([KEY_LINE.format(key=key)] + tail), before, len(head_text)


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def minimum_prompt_length(tokenizer: Any, key_digits: int = 5) -> int:
    """Tokens a passkey prompt needs before any filler (for any depth and key of ``key_digits``),
    with a small margin for keys that tokenize longer."""
    key = "9" * key_digits
    return max(_token_count(tokenizer, passkey_text(0, depth, key)[0]) for depth in (0.0, 1.0)) + key_digits


def make_passkey_prompt(tokenizer: Any, length: int, depth: float, key: str | int) -> PasskeyPrompt:
    """The longest passkey prompt of at most ``length`` tokens with the key at ``depth``.

    The prompt falls short of ``length`` by less than one filler sentence (plus a token or
    two where merges at the edges differ).

    Raises:
        ValueError: ``depth`` outside [0, 1], ``key`` not digits, or ``length`` too short to
            hold the task description, the key line and the question.
    """
    depth = check_depth(depth)
    key = str(key)
    if not key.isdigit():
        raise ValueError(f"key must be a string of digits, got {key!r}")
    minimum = _token_count(tokenizer, passkey_text(0, depth, key)[0])
    if length < minimum:
        raise ValueError(f"length must be >= {minimum} tokens for this tokenizer (the prompt without filler), got {length}")
    low, high = 0, 1  # invariant: passkey_text(low) fits; grow high until it does not
    while _token_count(tokenizer, passkey_text(high, depth, key)[0]) <= length:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _token_count(tokenizer, passkey_text(middle, depth, key)[0]) <= length:
            low = middle
        else:
            high = middle
    text, before, key_offset = passkey_text(low, depth, key)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, return_offsets_mapping=True)
        key_token_index = next(
            i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end > key_offset and end > start
        )
    else:  # slow tokenizers have no offsets: count the tokens of the text before the key line
        encoded = tokenizer(text)
        key_token_index = _token_count(tokenizer, text[:key_offset])
    return PasskeyPrompt(
        text=text,
        input_ids=list(encoded["input_ids"]),
        key=key,
        depth=depth,
        length=length,
        filler_sentences=low,
        sentences_before_key=before,
        key_token_index=key_token_index,
    )


def extract_key(answer: str) -> str | None:
    """The first run of digits in a generated answer (None when there is none)."""
    match = re.search(r"\d+", answer)
    return match.group(0) if match else None
