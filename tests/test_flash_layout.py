"""The flash-attn varlen path on CPU: its ``cu_seqlens`` layout, run through a plain-torch
stand-in for ``flash_attn_varlen_func``, must reproduce the dense reference of the rule."""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch

from hf_sinklora.attention import find_segments, interface
from hf_sinklora.attention.flash_varlen import build_varlen_layout, varlen_reference_attention
from hf_sinklora.attention.config import SFAttentionConfig
from hf_sinklora.attention.groups import build_group_layout

from .helpers import random_scenario
from .test_sf_rule import HEAD_LAYOUTS, run_against_reference

calls = []


def _recording_kernel(*args, **kwargs):
    calls.append(kwargs["cu_seqlens_q"])
    return varlen_reference_attention(*args, **kwargs)


@pytest.fixture
def fake_flash(monkeypatch):
    """Routes the flash backend to the CPU stand-in, as if flash-attn were installed on CUDA."""
    module = types.ModuleType("flash_attn")
    module.flash_attn_varlen_func = _recording_kernel
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(interface, "can_use_flash", lambda query: True)
    calls.clear()
    yield calls


@pytest.mark.parametrize("seed", range(40))
def test_varlen_layout_matches_dense_reference(fake_flash, seed):
    scenario = random_scenario(1000 + seed)
    scenario.holes, scenario.softcap = [], (5.0 if seed % 5 == 0 else None)
    if scenario.kind == "holes":
        scenario.kind = "right_pad"
    scenario.params["backend"] = "flash_attn" if seed % 2 else "auto"
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, seed=seed)
    window_binds = scenario.sliding_window is not None and scenario.sliding_window < scenario.seq_len
    assert fake_flash or window_binds  # the varlen path really ran unless a window forced SDPA


def test_varlen_layout_by_hand():
    """One row of 10 tokens, G = 4, 2 sinks, unshifted: groups [0,4), [4,8), [8,10)."""
    segments = find_segments(1, 10, torch.device("cpu"))
    layout = build_group_layout(segments, SFAttentionConfig(group_size=4).group_sizes_for(segments.length), shifted=False, num_sink_tokens=2)
    varlen = build_varlen_layout(layout)
    assert varlen.cu_seqlens_q.tolist() == [0, 4, 8, 10]
    assert varlen.cu_seqlens_k.tolist() == [0, 4, 10, 14]
    assert varlen.query_index.tolist() == list(range(10))
    assert varlen.key_index.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 0, 1, 8, 9]
    assert (varlen.max_seqlen_q, varlen.max_seqlen_k) == (4, 6)

    shifted = build_group_layout(segments, SFAttentionConfig(group_size=4).group_sizes_for(segments.length), shifted=True, num_sink_tokens=2)
    varlen = build_varlen_layout(shifted)  # groups [0,2), [2,6), [6,10)
    assert varlen.cu_seqlens_q.tolist() == [0, 2, 6, 10]
    assert varlen.key_index.tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 8, 9]


def test_flash_backend_refuses_cpu_tensors():
    from .helpers import FakeAttention

    module = FakeAttention({"backend": "flash_attn"}).train()
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="backend='flash_attn'"):
        interface.sf_attention_forward(module, q, q, q, None)


def test_packed_segments_by_hand():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    segments = find_segments(1, 9, torch.device("cpu"), position_ids=position_ids)
    assert segments.start.tolist() == [0, 3, 5] and segments.length.tolist() == [3, 2, 4]
    cu = find_segments(1, 9, torch.device("cpu"), cu_seq_lens=torch.tensor([0, 3, 5, 9]))
    assert cu.start.tolist() == [0, 3, 5] and cu.length.tolist() == [3, 2, 4]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
    padded = find_segments(3, 5, torch.device("cpu"), attention_mask=mask)
    assert padded.row.tolist() == [0, 1] and padded.start.tolist() == [2, 0] and padded.length.tolist() == [3, 4]
    assert padded.key_valid is not None and not padded.key_valid[1, 2]


def test_bad_cu_seq_lens_is_a_clear_error():
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        find_segments(1, 4, torch.device("cpu"), cu_seq_lens=torch.tensor([0, 3, 9]))
