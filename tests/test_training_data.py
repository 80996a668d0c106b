"""SFT data: LongAlpaca and TRL formats from files and memory, converted for response-only loss."""

from __future__ import annotations

import json

import datasets
import pytest

from hf_sinklora import load_sft_dataset
from hf_sinklora.training.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

RECORDS = [
    {"instruction": "Summarize the paper.", "input": "", "output": "It extends context."},
    {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_longalpaca_jsonl_becomes_prompt_completion(tmp_path):
    data = load_sft_dataset(_write_jsonl(tmp_path / "train.jsonl", RECORDS))
    assert data.column_names == ["prompt", "completion"]
    assert data[0] == {"prompt": PROMPT_NO_INPUT.format(instruction="Summarize the paper."),
                       "completion": "It extends context."}
    assert data[1]["prompt"] == PROMPT_WITH_INPUT.format(instruction="Translate.", input="Bonjour")
    assert data[1]["prompt"].endswith("### Input:\nBonjour\n\n### Response:\n")


def test_longalpaca_json_array_without_input_field(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "Q?", "output": "A."}]))
    data = load_sft_dataset(tmp_path / "train.json")
    assert data[0]["prompt"] == PROMPT_NO_INPUT.format(instruction="Q?") and data[0]["completion"] == "A."


def test_directory_of_files(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", RECORDS[:1])
    _write_jsonl(tmp_path / "b.jsonl", RECORDS[1:])
    assert len(load_sft_dataset(tmp_path)) == 2


def test_messages_split_before_last_assistant_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Long document ..."},
        {"role": "assistant", "content": "Summary"},
    ]
    data = load_sft_dataset([{"messages": messages, "source": "x"}])
    assert data.column_names == ["prompt", "completion"]
    assert data[0]["prompt"] == messages[:4]
    assert data[0]["completion"] == messages[4:]


def test_prompt_completion_and_text_pass_through():
    pc = load_sft_dataset(datasets.Dataset.from_dict({"prompt": ["p"], "completion": ["c"], "id": [1]}))
    assert pc.column_names == ["prompt", "completion"] and pc[0] == {"prompt": "p", "completion": "c"}
    text = load_sft_dataset(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t"]})}))
    assert text.column_names == ["text"] and text[0]["text"] == "t"


@pytest.mark.parametrize("records,message", [
    ([], "dataset is empty"),
    ([{"instruction": "Q"}], r"needs fields 'instruction' and 'output'; missing \['output'\]"),
    ([{"output": "A"}], r"missing \['instruction'\]"),
    ([{"instruction": "Q", "output": ""}], "record 0 has an empty or missing .output."),
    ([{"instruction": " ", "output": "A"}], "empty or missing 'instruction'"),
    ([{"question": "Q", "answer": "A"}], r"fields \['answer', 'question'\]; expected one of"),
    ([{"prompt": "Q"}], r"prompt/completion data needs both fields; missing \['completion'\]"),
    ([{"prompt": "Q", "completion": ""}], "'completion' of record 0 is empty"),
    ([{"text": ""}], "'text' of record 0 is empty"),
    ([{"messages": [{"role": "user", "content": "Q"}]}], "record 0 has no assistant turn"),
])
def test_bad_records(records, message):
    with pytest.raises(ValueError, match=message):
        load_sft_dataset(records)


def test_bad_sources(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_sft_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="suffix '.xml'"):
        load_sft_dataset(tmp_path / "data.xml")
    with pytest.raises(ValueError, match="does not exist"):
        load_sft_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_sft_dataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match="split 'train' not in the dataset"):
        load_sft_dataset(datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["t"]})}))
    with pytest.raises(TypeError, match="source must be"):
        load_sft_dataset(42)
