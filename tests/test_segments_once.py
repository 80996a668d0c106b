"""find_segments_once: one segment search per forward, never a stale one."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_sinklora.attention import segments as segments_module
from hf_sinklora.attention.segments import find_segments, find_segments_once


def _same(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("row", "start", "length"))


def test_the_same_unmodified_tensors_reuse_the_result():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    first = find_segments_once(1, 8, torch.device("cpu"), None, position_ids)
    assert find_segments_once(1, 8, torch.device("cpu"), None, position_ids) is first
    assert _same(first, find_segments(1, 8, torch.device("cpu"), None, position_ids))


def test_a_modified_or_other_tensor_is_searched_again():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    first = find_segments_once(1, 8, torch.device("cpu"), None, position_ids)
    position_ids[0, 3:] += 3  # in place: one segment now
    second = find_segments_once(1, 8, torch.device("cpu"), None, position_ids)
    assert second is not first and second.length.tolist() == [3 + 5]
    equal_content = position_ids.clone()
    third = find_segments_once(1, 8, torch.device("cpu"), None, equal_content)
    assert third is not second and _same(third, second)
    assert find_segments_once(2, 8, torch.device("cpu"), None, None).row.tolist() == [0, 1]
    assert find_segments_once(3, 8, torch.device("cpu"), None, None).row.tolist() == [0, 1, 2], "the grid is part of the key"


def test_inference_tensors_are_searched_every_time():
    with torch.inference_mode():
        position_ids = torch.tensor([[0, 1, 0, 1]])
        first = find_segments_once(1, 4, torch.device("cpu"), None, position_ids)
        assert find_segments_once(1, 4, torch.device("cpu"), None, position_ids) is not first
        assert first.length.tolist() == [2, 2]


def test_one_search_per_forward_not_per_layer(monkeypatch):
    calls = []
    original = segments_module.find_segments
    monkeypatch.setattr(segments_module, "find_segments", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sf_attention").train()
    ids = torch.randint(0, 64, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    model(input_ids=ids, labels=ids)
    assert len(calls) == 2, calls
