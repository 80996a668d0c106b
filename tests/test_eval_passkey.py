"""Passkey retrieval: prompt fitting and depth, scoring with scripted models, a real tiny model end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hf_sinklora.evaluation import (
    accuracy_grid,
    extract_key,
    greedy_answer,
    make_passkey_prompt,
    passkey_accuracy,
    plot_passkey_heatmap,
    write_json,
)
from hf_sinklora.evaluation.passkey_prompt import FILLER, passkey_text

from .eval_helpers import english_tokenizer, one_torch_thread, tiny_llama  # noqa: F401 (autouse fixture)

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def tokenizer():
    return english_tokenizer()


class ScriptedModel(torch.nn.Module):
    """Reads the key from the prompt and answers ``answer(key, depth_fraction)`` (no learning)."""

    def __init__(self, tokenizer, answer):
        super().__init__()
        self.tokenizer, self.answer = tokenizer, answer
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, **kwargs):
        assert input_ids.shape[0] == 1 and not do_sample and not self.training
        self.calls += 1
        text = self.tokenizer.decode(input_ids[0])
        key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
        where = text.index("The pass key is " + key) / len(text)
        reply = self.tokenizer(self.answer(key, where), add_special_tokens=False)["input_ids"][:max_new_tokens]
        return torch.cat([input_ids, torch.tensor([reply])], dim=1)


@pytest.mark.parametrize("length", [160, 200, 256, 517])
def test_prompt_fills_the_requested_length(tokenizer, length):
    sentence_tokens = max(len(tokenizer(" " + s.strip() + ".")["input_ids"]) for s in FILLER.split(".") if s.strip())
    for depth in DEPTHS:
        prompt = make_passkey_prompt(tokenizer, length, depth, "71432")
        assert length - sentence_tokens - 2 <= len(prompt.input_ids) <= length
        assert prompt.input_ids == tokenizer(prompt.text)["input_ids"]
        assert len(tokenizer(passkey_text(prompt.filler_sentences + 1, depth, "71432")[0])["input_ids"]) > length
        assert prompt.text.endswith("What is the pass key? The pass key is")
        assert prompt.text.count("71432") == 2


def test_depth_places_the_key_where_asked(tokenizer):
    length = 400
    prompts = {d: make_passkey_prompt(tokenizer, length, d, "52817") for d in DEPTHS}
    lines = {d: p.text.split("\n") for d, p in prompts.items()}
    key_line = "The pass key is 52817. Remember it. 52817 is the pass key."
    assert lines[0.0][1] == key_line  # right after the task description
    assert lines[1.0][-2] == key_line  # right before the question
    first, last = prompts[0.0].key_token_index, prompts[1.0].key_token_index
    for depth, prompt in prompts.items():
        assert prompt.sentences_before_key == round(depth * prompt.filler_sentences)
        before = tokenizer.decode(prompt.input_ids[: prompt.key_token_index])
        after = tokenizer.decode(prompt.input_ids[prompt.key_token_index :])
        assert "52817" not in before and after.lstrip().startswith("The pass key is 52817")
        assert (prompt.key_token_index - first) / (last - first) == pytest.approx(depth, abs=0.04)


def test_oracle_model_scores_everything_and_a_wrong_one_nothing(tokenizer):
    lengths = [160, 240]
    oracle = ScriptedModel(tokenizer, lambda key, where: f" {key}. Remember")
    result = passkey_accuracy(oracle, tokenizer, lengths, DEPTHS, trials=3, seed=7, progress=False)
    assert oracle.calls == 2 * 5 * 3
    assert result["accuracy"] == 1.0 and set(result["per_length"].values()) == {1.0}
    assert all(cell["accuracy"] == 1.0 and cell["trials"] == 3 for cell in result["cells"])
    keys = [s["key"] for s in result["samples"]]
    assert all(len(k) == 5 and k.isdigit() for k in keys) and len(set(keys)) > 20

    off_by_one = ScriptedModel(tokenizer, lambda key, where: f" {int(key) + 1}")
    wrong = passkey_accuracy(off_by_one, tokenizer, lengths, DEPTHS, trials=3, seed=7, progress=False)
    assert wrong["accuracy"] == 0.0 and all(s["correct"] is False for s in wrong["samples"])
    assert [s["key"] for s in wrong["samples"]] == keys  # keys depend on the seed, not on the model


def test_accuracy_is_aggregated_per_cell_length_and_depth(tokenizer):
    early_only = ScriptedModel(tokenizer, lambda key, where: f" {key}" if where < 0.6 else " 0")
    result = passkey_accuracy(early_only, tokenizer, [300], [0.0, 1.0], trials=2, seed=1, progress=False)
    assert result["per_depth"] == {"0": 1.0, "1": 0.0}
    assert result["per_length"] == {"300": 0.5} and result["accuracy"] == 0.5
    assert [(c["depth"], c["correct"]) for c in result["cells"]] == [(0.0, 2), (1.0, 0)]


def test_extract_key():
    assert extract_key(" 71432. Remember it") == "71432"
    assert extract_key(" is 7143 2") == "7143"
    assert extract_key(" no digits") is None


def test_greedy_answer_matches_a_manual_argmax_loop(tokenizer):
    model = tiny_llama(len(tokenizer), seed=2)
    prompt = make_passkey_prompt(tokenizer, 192, 0.5, "31415")
    generated = greedy_answer(model, prompt.input_ids, 6, pad_token_id=tokenizer.pad_token_id)
    ids = list(prompt.input_ids)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert generated == ids[len(prompt.input_ids) :]


def test_real_tiny_model_end_to_end_writes_json_and_png(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer), seed=3)
    model.train()
    result = passkey_accuracy(model, tokenizer, [192, 256], [0.0, 0.5, 1.0], trials=2, seed=0, progress=False)
    assert model.training  # mode restored
    assert len(result["cells"]) == 6 and len(result["samples"]) == 12
    for sample in result["samples"]:
        assert sample["correct"] == (re.search(r"\d+", sample["answer"]) is not None
                                     and re.search(r"\d+", sample["answer"]).group(0) == sample["key"])
        assert sample["prompt_tokens"] <= sample["length"]
    assert result["accuracy"] == sum(s["correct"] for s in result["samples"]) / 12

    json_path = write_json(result, tmp_path / "pk.json")
    assert json.loads(json_path.read_text())["cells"] == result["cells"]
    png = plot_passkey_heatmap(result, tmp_path / "plots" / "pk.png")
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_accuracy_grid_puts_depths_on_rows_and_lengths_on_columns():
    cells = [{"length": L, "depth": d, "accuracy": 10 * L + d} for L in (512, 128) for d in (1.0, 0.0)]
    lengths, depths, grid = accuracy_grid({"cells": cells})
    assert lengths == [128, 512] and depths == [0.0, 1.0]
    assert grid == [[1280.0, 5120.0], [1281.0, 5121.0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depths": [0.5, 1.5]}, "depth"),
        ({"depths": [-0.1]}, "depth"),
        ({"lengths": [20]}, "length"),
        ({"lengths": []}, "lengths"),
        ({"trials": 0}, "trials"),
    ],
)
def test_bad_arguments_name_the_parameter(tokenizer, kwargs, match):
    model = ScriptedModel(tokenizer, lambda key, where: key)
    arguments = {"lengths": [200], "depths": [0.5], "trials": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        passkey_accuracy(model, tokenizer, progress=False, **arguments)
    with pytest.raises(ValueError, match="key"):
        make_passkey_prompt(tokenizer, 200, 0.5, "12a45")
