"""The flex_attention backend on the CPU: forward against the dense reference (eager and compiled),
its block mask against torch's own ``create_block_mask``, and the errors for what it cannot do.

torch has no flex_attention backward on the CPU, so gradients are checked on CUDA only
(tests/test_cuda.py); here the CPU refuses them with a clear error."""

from __future__ import annotations

import random

import pytest
import torch

import hf_sinklora
from hf_sinklora.attention import SFAttentionConfig, find_segments, sf_attention_forward
from hf_sinklora.attention import flex as flex_backend
from hf_sinklora.attention import interface

from .families import twins
from .helpers import FakeAttention, Scenario, random_scenario
from .reference import dense_attention, describe_tokens, sf_reference_mask
from .test_models import _packed_examples, _trl_packed_batch, layout_batch
from .test_sf_rule import HEAD_LAYOUTS

pytestmark = pytest.mark.skipif(not flex_backend.flex_attention_available(), reason="torch has no flex_attention")

FLEX_EVAL = {"backend": "flex", "eval_mode": "sf"}


def _inputs(scenario: Scenario, num_heads: int, num_kv_heads: int, dim: int, dtype, seed: int):
    torch.manual_seed(seed)
    batch, n = len(scenario.rows), scenario.seq_len
    q = torch.randn(batch, num_heads, n, dim, dtype=dtype)
    k = torch.randn(batch, num_kv_heads, n, dim, dtype=dtype)
    v = torch.randn(batch, num_kv_heads, n, dim, dtype=dtype)
    return q, k, v


def _reference(scenario: Scenario, q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reference output (B, n, Hq, D), real-token mask (B, n))``."""
    segment_id, position = describe_tokens(scenario.seq_len, scenario.rows)
    mask = sf_reference_mask(segment_id, position, q.shape[1], sliding_window=scenario.sliding_window,
                             key_valid=scenario.key_valid(), **scenario.params)
    real = segment_id >= 0
    if scenario.key_valid() is not None:
        real &= scenario.key_valid()
    return dense_attention(q, k, v, mask, scale=scale, softcap=scenario.softcap), real


def check_flex_forward(scenario: Scenario, num_heads: int, num_kv_heads: int, *, dim: int = 8,
                       dtype=torch.float64, seed: int = 0) -> None:
    """``sf_attention_forward`` with ``backend="flex"`` (eval, ``eval_mode="sf"``, no grad) against the reference."""
    q, k, v = _inputs(scenario, num_heads, num_kv_heads, dim, dtype, seed)
    module = FakeAttention({**scenario.params, **FLEX_EVAL}, num_heads // num_kv_heads).eval()
    mask, kwargs = scenario.attention_kwargs()
    with torch.no_grad():
        out, weights = sf_attention_forward(module, q, k, v, mask, scaling=0.3, sliding_window=scenario.sliding_window,
                                            softcap=scenario.softcap, **kwargs)
    assert weights is None and out.shape == (len(scenario.rows), scenario.seq_len, num_heads, dim)
    ref, real = _reference(scenario, q, k, v, 0.3)
    real = real[:, :, None, None]
    torch.testing.assert_close(out * real, ref * real, atol=1e-9, rtol=1e-7)


@pytest.fixture(autouse=True)
def _fresh_block_mask_cache():
    flex_backend._block_masks.clear()
    yield
    flex_backend._block_masks.clear()


# ------------------------------------------------------------------------------ forward, eager


@pytest.mark.parametrize("seed", range(60))
def test_random_scenarios_match_dense_reference(seed):
    """Every layout (whole rows, padding, packed by position_ids / cu_seq_lens, holes), sinks,
    shift ratios, fixed group sizes, sliding windows, soft-capping and GQA, at random."""
    scenario = random_scenario(seed)
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    check_flex_forward(scenario, num_heads, num_kv_heads, seed=seed)


@pytest.mark.parametrize("n", [1, 3, 37, 64, 130, 257])
@pytest.mark.parametrize("params", [{}, {"group_size": 7}, {"group_size_ratio": 0.5, "num_sink_tokens": 2}])
def test_whole_rows(n, params):
    check_flex_forward(Scenario(seq_len=n, rows=[[(0, n)], [(0, n)]], kind="plain", params=params), 4, 2)


@pytest.mark.parametrize(
    "kind,rows",
    [
        ("right_pad", [[(0, 50)], [(0, 31)]]),
        ("left_pad", [[(0, 50)], [(13, 37)]]),
        ("packed_pos", [[(0, 9), (9, 30), (39, 11)], [(0, 50)]]),
        ("packed_cu", [[(0, 17), (17, 1), (18, 3), (21, 29)]]),
    ],
)
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 1)])
def test_padding_and_packing(kind, rows, heads):
    check_flex_forward(Scenario(seq_len=50, rows=rows, kind=kind, params={}), *heads)


@pytest.mark.parametrize(
    "params",
    [
        {"num_sink_tokens": 0},
        {"shifted_head_ratio": 0.0},
        {"shifted_head_ratio": 1.0},
        {"shifted_head_ratio": 0.25, "group_size": 5},  # the class boundary cuts a GQA group (4 heads / 2)
    ],
)
def test_rule_settings(params):
    scenario = Scenario(seq_len=45, rows=[[(0, 45)], [(0, 20), (20, 25)]], kind="packed_pos", params=params)
    check_flex_forward(scenario, 4, 2)


@pytest.mark.parametrize("window", [1, 3, 9, 40])
def test_sliding_window(window):
    scenario = Scenario(seq_len=40, rows=[[(0, 40)], [(5, 35)]], kind="left_pad", params={}, sliding_window=window)
    check_flex_forward(scenario, 4, 2)


def test_softcap():
    scenario = Scenario(seq_len=33, rows=[[(0, 33)]], kind="plain", params={}, softcap=0.7)
    check_flex_forward(scenario, 4, 1)


# ------------------------------------------------------------------------------ the block mask


@pytest.mark.parametrize("seed", range(12))
def test_block_mask_equals_create_block_mask(seed):
    """Tile classification (empty / partial / full) equals torch's from the same mask_mod; small
    tiles so that every kind of tile occurs."""
    from torch.nn.attention.flex_attention import create_block_mask

    scenario = random_scenario(100 + seed, max_len=150)
    num_heads = random.Random(seed).choice([1, 4, 6])
    batch, n = len(scenario.rows), scenario.seq_len
    mask, kwargs = scenario.attention_kwargs()
    segments = find_segments(batch, n, torch.device("cpu"), mask, kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"))
    tables = flex_backend.token_tables(segments, SFAttentionConfig.from_dict(scenario.params), num_heads,
                                       scenario.sliding_window)
    ours = flex_backend.build_block_mask(tables, block_size=16)
    theirs = create_block_mask(flex_backend.sf_mask_mod(tables), batch, num_heads, n, n, device="cpu", BLOCK_SIZE=16)
    assert torch.equal(ours.to_dense().expand_as(theirs.to_dense()), theirs.to_dense())
    full_ours = ours.full_kv_num_blocks.expand_as(theirs.full_kv_num_blocks)
    assert torch.equal(full_ours, theirs.full_kv_num_blocks)


def test_block_mask_skips_tiles():
    """Whole rows of 1024 (G = 256): most tiles hidden, some fully visible -- where the speed comes from."""
    segments = find_segments(1, 1024, torch.device("cpu"))
    block_mask = flex_backend.sf_block_mask(segments, SFAttentionConfig(), 4, None)
    tiles = block_mask.kv_num_blocks.shape[-1] * block_mask.kv_indices.shape[-1]
    partial, full = int(block_mask.kv_num_blocks.sum()), int(block_mask.full_kv_num_blocks.sum())
    assert full > 0 and partial > 0
    assert (partial + full) / (block_mask.kv_num_blocks.shape[1] * tiles) < 0.5


def test_block_mask_is_cached_per_layout():
    config = SFAttentionConfig()
    row = find_segments(2, 40, torch.device("cpu"))
    first = flex_backend.sf_block_mask(row, config, 4, None)
    assert flex_backend.sf_block_mask(find_segments(2, 40, torch.device("cpu")), config, 4, None) is first
    assert flex_backend.sf_block_mask(row, config, 4, 8) is not first  # another window
    assert flex_backend.sf_block_mask(row, SFAttentionConfig(num_sink_tokens=0), 4, None) is not first
    packed = find_segments(2, 40, torch.device("cpu"), position_ids=torch.cat([torch.arange(20), torch.arange(20)])[None])
    assert flex_backend.sf_block_mask(packed, config, 4, None) is not first


# ------------------------------------------------------------------------------ forward, compiled


COMPILED_SCENARIOS = [
    Scenario(seq_len=512, rows=[[(0, 512)], [(0, 512)]], kind="plain", params={"group_size": 256, "num_sink_tokens": 0}),
    Scenario(seq_len=512, rows=[[(0, 512)], [(0, 300)]], kind="right_pad", params={"group_size": 128}),
    Scenario(seq_len=512, rows=[[(0, 200), (200, 312)], [(0, 512)]], kind="packed_pos", params={}),
    Scenario(seq_len=512, rows=[[(0, 512)], [(100, 412)]], kind="left_pad", params={"group_size": 64},
             sliding_window=100),
]


@pytest.mark.parametrize("index", range(len(COMPILED_SCENARIOS)))
def test_compiled_kernel_uses_the_block_mask_correctly(index):
    """The eager CPU kernel ignores the block mask; the compiled one skips hidden tiles and runs full
    tiles without mask_mod, so a misclassified tile shows here. One shape: compiled once."""
    scenario = COMPILED_SCENARIOS[index]
    q, k, v = _inputs(scenario, 4, 2, 16, torch.float32, index)
    mask, kwargs = scenario.attention_kwargs()
    segments = interface._segments_for(q, mask, kwargs)
    out = flex_backend.flex_sf_attention(q, k, v, segments, SFAttentionConfig.from_dict(scenario.params), scale=0.3,
                                         sliding_window=scenario.sliding_window, compiled=True)
    ref, real = _reference(scenario, q, k, v, 0.3)
    real = real[:, :, None, None]
    torch.testing.assert_close(out * real, ref * real, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ a real model


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2"])
@pytest.mark.parametrize("layout", ["full", "right_pad", "left_pad", "packed"])
def test_model_logits_equal_grouped_sdpa(family, layout):
    """A tiny model in eval mode with ``eval_mode="sf"``: flex and grouped SDPA give the same logits
    (gemma2: soft-capping and a sliding window; qwen3_gqa_split: a class boundary inside a GQA group)."""
    flex_model, sdpa_model = twins(family, "sf_attention", "sf_attention")
    hf_sinklora.configure_sf_attention(flex_model, backend="flex", eval_mode="sf")
    hf_sinklora.configure_sf_attention(sdpa_model, backend="sdpa", eval_mode="sf")
    if layout == "packed":
        inputs = _trl_packed_batch(_packed_examples())
        real = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    else:
        inputs, _, real = layout_batch(layout)
    inputs = {key: value for key, value in inputs.items() if key != "labels"}
    with torch.no_grad():
        flex_logits = flex_model.eval()(**inputs, use_cache=False).logits
        sdpa_logits = sdpa_model.eval()(**inputs, use_cache=False).logits
    torch.testing.assert_close(flex_logits[real], sdpa_logits[real], atol=1e-10, rtol=1e-8)


# ------------------------------------------------------------------------------ what it refuses


def _call(params: dict, *, training: bool, requires_grad: bool, dropout: float = 0.0):
    q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=requires_grad) for _ in range(3))
    module = FakeAttention(params).train(training)
    return sf_attention_forward(module, q, k, v, None, dropout=dropout)


def test_cpu_training_raises_a_clear_error():
    with pytest.raises(ValueError, match="backend='flex'.*no flex_attention backward on the CPU"):
        _call({"backend": "flex"}, training=True, requires_grad=True)


def test_cpu_eval_needs_no_grad():
    with pytest.raises(ValueError, match="no flex_attention backward on the CPU"):
        _call(FLEX_EVAL, training=False, requires_grad=True)
    with torch.no_grad():  # inputs that require grad are fine once grad mode is off
        out, _ = _call(FLEX_EVAL, training=False, requires_grad=True)
    assert not out.requires_grad


def test_dropout_is_refused_by_explicit_flex():
    with torch.no_grad(), pytest.raises(ValueError, match=r"backend='flex'.*dropout=0\.1"):
        _call({"backend": "flex"}, training=True, requires_grad=False, dropout=0.1)


def test_auto_never_picks_flex_on_the_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("flex was called")

    monkeypatch.setattr(interface, "flex_sf_attention", fail)
    for backend in ("auto", "sdpa"):
        with torch.no_grad():
            _call({"backend": backend, "eval_mode": "sf"}, training=False, requires_grad=False)
        _call({"backend": backend}, training=True, requires_grad=True)[0].sum().backward()


def test_auto_never_picks_flex_on_cuda(monkeypatch):
    """Grouped SDPA beat flex on an H100 (benchmarks/results/gpu), so auto takes SDPA there too."""
    cuda_like = type("CudaQuery", (), {"is_cuda": True})()
    monkeypatch.setattr(interface, "flex_unsupported_reason", lambda *args: None)
    monkeypatch.setattr(interface, "can_use_flash", lambda query: False)
    assert interface.resolve_backend(cuda_like, cuda_like, cuda_like, SFAttentionConfig(backend="auto")) == "sdpa"
    monkeypatch.setattr(interface, "can_use_flash", lambda query: True)
    assert interface.resolve_backend(cuda_like, cuda_like, cuda_like, SFAttentionConfig(backend="auto")) == "flash_attn"


def test_explicit_flex_failure_propagates(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("triton compile failed")

    monkeypatch.setattr(interface, "flex_sf_attention", broken)
    monkeypatch.setattr(interface, "resolve_backend", lambda *args, **kwargs: "flex")
    with torch.no_grad(), pytest.raises(RuntimeError, match="triton compile failed"):
        _call({"backend": "flex", "eval_mode": "sf"}, training=False, requires_grad=False)


def test_resolve_backend_on_the_cpu(monkeypatch):
    q = torch.randn(1, 2, 4, 16)
    pick = lambda backend, dropout=0.0: interface.resolve_backend(q, q, q, SFAttentionConfig(backend=backend), dropout)  # noqa: E731
    assert pick("auto") == "sdpa" and pick("sdpa") == "sdpa" and pick("flex") == "flex"
    with pytest.raises(ValueError, match="dropout=0.2"):
        pick("flex", 0.2)
    monkeypatch.setattr(interface, "can_use_flash", lambda query: True)
    assert pick("auto") == "flash_attn" and pick("flex") == "flex"


def test_unsupported_reasons():
    q = torch.randn(1, 2, 4, 8)
    assert flex_backend.flex_unsupported_reason(q, q, q, 0.0) is None
    assert "dropout=0.5" in flex_backend.flex_unsupported_reason(q, q, q, 0.5)
    meta = q.to("meta")
    assert "not on meta" in flex_backend.flex_unsupported_reason(meta, meta, meta, 0.0)


def test_config_lists_flex():
    assert SFAttentionConfig(backend="flex").backend == "flex"
    with pytest.raises(ValueError, match="backend must be one of .*'flex'"):
        SFAttentionConfig(backend="flexx")
