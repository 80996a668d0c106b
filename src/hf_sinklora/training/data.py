"""SFT data for the recipe: LongAlpaca-style records and TRL's standard formats.

Everything becomes a format ``trl.SFTTrainer`` trains on directly:

* LongAlpaca (``instruction``, optional ``input``, ``output``) -> ``prompt`` / ``completion``
  with the Alpaca prompt, so TRL's ``completion_only_loss`` puts the loss on the response.
* ``messages`` (conversational) -> conversational ``prompt`` / ``completion`` split before the
  last assistant turn: the loss is on that reply, earlier turns are context. This works with
  any chat template (``assistant_only_loss`` would need generation markers in the template).
* ``prompt`` / ``completion`` -> unchanged (loss on the completion).
* ``text`` -> unchanged (language modelling: loss on every token).
* ``input_ids`` (already tokenized) -> unchanged (language modelling on those tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from ..data.sources import load_records

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
FORMATS = ("longalpaca", "messages", "prompt_completion", "text", "tokens")


def detect_format(column_names: list[str]) -> str:
    """Which of :data:`FORMATS` a dataset with these columns is in.

    Raises:
        ValueError: naming the fields each format needs, when none matches.
    """
    columns = set(column_names)
    if "input_ids" in columns:
        return "tokens"
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "instruction" in columns or "output" in columns:
        missing = sorted({"instruction", "output"} - columns)
        if missing:
            raise ValueError(f"LongAlpaca-style data needs fields 'instruction' and 'output'; missing {missing}")
        return "longalpaca"
    if "text" in columns:
        return "text"
    if "prompt" in columns or "completion" in columns:
        missing = sorted({"prompt", "completion"} - columns)
        raise ValueError(f"prompt/completion data needs both fields; missing {missing}")
    raise ValueError(
        f"dataset has fields {sorted(columns)}; expected one of: 'instruction'+'output' (+'input') "
        "(LongAlpaca), 'messages', 'prompt'+'completion', 'text', or tokenized 'input_ids'"
    )


def longalpaca_to_prompt_completion(example: dict[str, Any], index: int | None = None) -> dict[str, str]:
    """One LongAlpaca record -> ``{"prompt", "completion"}`` (the Alpaca prompt template)."""
    instruction, output = example.get("instruction"), example.get("output")
    where = "" if index is None else f" {index}"
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"LongAlpaca record{where} has an empty or missing 'instruction': {str(example)[:120]}")
    if not isinstance(output, str) or not output.strip():
        raise ValueError(f"LongAlpaca record{where} has an empty or missing 'output': {str(example)[:120]}")
    extra = example.get("input")
    if isinstance(extra, str) and extra.strip():
        prompt = PROMPT_WITH_INPUT.format(instruction=instruction, input=extra)
    else:
        prompt = PROMPT_NO_INPUT.format(instruction=instruction)
    return {"prompt": prompt, "completion": output}


def messages_to_prompt_completion(
    example: dict[str, Any], index: int | None = None
) -> dict[str, list[dict[str, str]]]:
    """Conversational record -> conversational prompt/completion split before the last assistant turn."""
    messages = example.get("messages")
    where = "a 'messages' record" if index is None else f"'messages' record {index}"
    if not messages:
        raise ValueError(f"{where} is empty")
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{where} has no assistant turn: roles {[m.get('role') for m in messages]}")
    if last == 0:
        raise ValueError(f"{where} starts with the assistant turn: nothing to condition on")
    return {"prompt": messages[:last], "completion": messages[last : last + 1]}


def _check_text(dataset: datasets.Dataset) -> None:
    for index, text in enumerate(dataset["text"]):
        if not isinstance(text, str) or not text:
            raise ValueError(f"'text' of record {index} is empty or not a string")


def _check_prompt_completion(dataset: datasets.Dataset) -> None:
    for index, completion in enumerate(dataset["completion"]):
        if not completion:
            raise ValueError(f"'completion' of record {index} is empty")


def to_sft_format(dataset: datasets.Dataset) -> datasets.Dataset:
    """Converts ``dataset`` to a format ``SFTTrainer`` trains on with the loss on responses.

    Raises:
        ValueError: the dataset is empty, a required field is missing, or a record is empty.
    """
    if len(dataset) == 0:
        raise ValueError("dataset is empty: no training records")
    fmt = detect_format(dataset.column_names)
    if fmt == "longalpaca":
        return dataset.map(longalpaca_to_prompt_completion, with_indices=True, remove_columns=dataset.column_names,
                           desc="LongAlpaca -> prompt/completion")
    if fmt == "messages":
        return dataset.map(messages_to_prompt_completion, with_indices=True, remove_columns=dataset.column_names,
                           desc="messages -> prompt/completion")
    if fmt == "prompt_completion":
        _check_prompt_completion(dataset)
        return dataset.select_columns(["prompt", "completion"])
    if fmt == "tokens":
        return dataset
    _check_text(dataset)
    return dataset.select_columns(["text"])


def load_sft_dataset(
    source: str | Path | datasets.Dataset | datasets.DatasetDict | list[dict[str, Any]],
    split: str = "train",
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Loads training data from a file, a directory of files, a hub id or memory, and converts it.

    Args:
        source: a ``.json``/``.jsonl``/``.csv``/``.parquet`` file, a directory of such files, a
            ``datasets`` hub id (``"Yukang/LongAlpaca-12k"``), a ``Dataset``/``DatasetDict``, or a
            list of records.
        split: the split to take from a ``DatasetDict`` or hub id.
        **load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``revision``, ``name``).

    Returns:
        A ``Dataset`` in one of TRL's formats (see :func:`to_sft_format`).

    Raises:
        ValueError: unknown file type, missing split, missing fields or empty data.
    """
    if isinstance(source, list):
        dataset = datasets.Dataset.from_list(source) if source else datasets.Dataset.from_dict({})
    elif isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not in the dataset; available: {sorted(source)}")
        dataset = source[split]
    elif isinstance(source, datasets.Dataset):
        dataset = source
    elif isinstance(source, (str, Path)):
        dataset = load_records(source, split=split, **load_kwargs)
    else:
        raise TypeError(f"source must be a path, hub id, Dataset, DatasetDict or list, got {type(source).__name__}")
    return to_sft_format(dataset)
