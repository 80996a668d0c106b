"""H2OLayer + scored attention against the naive reference, step by step, on random tensors."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from hf_sinklora import H2OCache
from hf_sinklora.cache import (
    EvictingCache,
    EvictionPolicy,
    H2OPolicy,
    RecentWindowPolicy,
    StreamingLLMPolicy,
    h2o_attention,
    h2o_layer_of,
    scored_attention,
)

from .h2o_reference import ReferenceH2OHead


def _live(positions, real_positions, seen, window):
    """Kept tokens that can still be attended: real and, for sliding layers, inside the window."""
    return [p for p in positions if p in real_positions and (window is None or p > seen - 1 - window)]


def run_against_reference(
    *, batch=2, kv_heads=2, group=2, dim=8, budget=12, recent_ratio=0.5, sinks=2, chunks=(20, 1, 1, 1, 1, 1),
    pads=(0, 3), window=None, softcap=None, seed=0, chunk_elements=None, policy=None,
):
    """``policy``: an EvictionPolicy that must behave as the reference H2O with these settings."""
    generator = torch.Generator().manual_seed(seed)
    cache = H2OCache(budget, recent_ratio=recent_ratio, num_sink_tokens=sinks) if policy is None else EvictingCache(policy)
    refs = [[ReferenceH2OHead(budget, recent_ratio, sinks) for _ in range(kv_heads)] for _ in range(batch)]
    total = sum(chunks)
    real = torch.ones(batch, total, dtype=torch.bool)
    for b, pad in enumerate(pads):
        real[b, :pad] = False
    scale = dim**-0.5
    seen = 0
    for size in chunks:
        q = torch.randn(batch, kv_heads * group, size, dim, generator=generator, dtype=torch.float64)
        k = torch.randn(batch, kv_heads, size, dim, generator=generator, dtype=torch.float64)
        v = torch.randn(batch, kv_heads, size, dim, generator=generator, dtype=torch.float64)
        keys, _ = cache.update(k, v, 0)
        layer = h2o_layer_of(keys)
        assert layer is cache.layers[0]
        mask = real[:, : seen + size]
        if chunk_elements is None:
            out = h2o_attention(q, layer, mask, scale=scale, sliding_window=window, softcap=softcap)
        else:  # drive the pieces directly to force many query chunks
            layer.begin_step(size, mask[:, -size:])
            out, mass = scored_attention(q, layer, scale=scale, queries_real=mask[:, -size:],
                                         sliding_window=window, softcap=softcap, chunk_elements=chunk_elements)
            layer.end_step(mass, window)
        seen += size
        assert cache.get_seq_length() == seen
        assert layer.num_kept == min(seen, budget)
        for b in range(batch):
            real_positions = set(real[b].nonzero().flatten().tolist())
            step_real = real[b, seen - size : seen].tolist()
            for h in range(kv_heads):
                ref_out = refs[b][h].step(q[b, h * group : (h + 1) * group], k[b, h], v[b, h], step_real,
                                          scale=scale, sliding_window=window, softcap=softcap)
                got = out[b, :, h * group : (h + 1) * group].transpose(0, 1)  # (group, size, D)
                rows = torch.tensor(step_real)
                torch.testing.assert_close(got[:, rows], ref_out[:, rows], atol=1e-10, rtol=1e-8)
                kept = layer.positions[b, h].tolist()
                assert len(kept) == len(refs[b][h].kept)
                assert _live(kept, real_positions, seen, window) == _live(refs[b][h].kept, real_positions, seen, window)
    return cache


def test_decoding_after_long_prefill_matches_reference():
    run_against_reference()


def test_chunked_prefill_matches_reference():
    run_against_reference(chunks=(7, 7, 7, 3, 1, 1, 1, 1), pads=(5, 0))


def test_gqa_groups_of_four_and_mha():
    run_against_reference(kv_heads=1, group=4, seed=1)
    run_against_reference(kv_heads=3, group=1, seed=2)


def test_sliding_window_and_softcap():
    run_against_reference(window=6, softcap=2.0, chunks=(16, 1, 1, 4, 1, 1), seed=3)


def test_streaming_and_recent_only_policies():
    run_against_reference(recent_ratio=1.0, sinks=3, seed=4)
    run_against_reference(recent_ratio=1.0, sinks=0, seed=5)
    run_against_reference(recent_ratio=0.0, sinks=0, seed=6)  # heavy hitters only


@pytest.mark.parametrize("window", [None, 6])
def test_streaming_llm_and_recent_window_policy_objects(window):
    # StreamingLLM = H2O whose recent window fills the budget: the reference with recent_ratio=1.0
    run_against_reference(recent_ratio=1.0, sinks=3, seed=4, window=window, policy=StreamingLLMPolicy(12, num_sink_tokens=3))
    run_against_reference(recent_ratio=1.0, sinks=0, seed=5, window=window, policy=RecentWindowPolicy(12))


@dataclass(frozen=True, kw_only=True)
class OldestFirstPolicy(EvictionPolicy):
    """A policy written the way a user would add one: keep the earliest tokens."""

    def keep_priority(self, scores, slot_positions, newest, budget):
        return -slot_positions.to(scores.dtype)


def test_a_new_policy_is_one_class():
    cache = EvictingCache(OldestFirstPolicy(6, num_sink_tokens=1))
    for size in (9, 1, 1, 3):
        keys, _ = cache.update(*(torch.randn(1, 2, size, 4) for _ in range(2)), 0)
        h2o_attention(torch.randn(1, 2, size, 4), h2o_layer_of(keys), None, scale=0.5)
    assert cache.layers[0].positions.tolist() == [[list(range(6))] * 2]
    assert cache.get_seq_length() == 14


def test_policies_validate_and_stay_frozen():
    with pytest.raises(ValueError, match="budget must be an int >= num_sink_tokens \\+ 1 = 5"):
        StreamingLLMPolicy(4)
    with pytest.raises(ValueError, match="recent_ratio must be a number in \\[0, 1\\]"):
        H2OPolicy(8, recent_ratio=2)
    with pytest.raises(TypeError, match="policy must be an EvictionPolicy"):
        EvictingCache(8)
    assert RecentWindowPolicy(8).num_sink_tokens == 0
    assert repr(H2OCache(8)).startswith("H2OCache(H2OPolicy(budget=8, num_sink_tokens=4, recent_ratio=0.5)")


def test_query_chunking_changes_nothing():
    run_against_reference(chunk_elements=50, chunks=(30, 1, 1), seed=7)


@pytest.mark.parametrize("seed", range(8))
def test_random_settings(seed):
    rng = random.Random(seed)
    sinks = rng.choice([0, 1, 4])
    budget = rng.randint(sinks + 1, 16)
    chunks = [rng.randint(1, 12) for _ in range(rng.randint(1, 3))] + [1] * rng.randint(1, 6)
    run_against_reference(
        budget=budget, sinks=sinks, recent_ratio=rng.choice([0.0, 0.3, 0.5, 1.0]), chunks=tuple(chunks),
        pads=(0, rng.randint(0, min(3, chunks[0] - 1))), window=rng.choice([None, rng.randint(1, 10)]),
        kv_heads=rng.choice([1, 2]), group=rng.choice([1, 2, 3]), seed=seed,
    )


def test_decoding_copies_nothing_and_prefill_shrinks():
    """A decode step writes into the freed slot (no growth); a multi-token step compacts."""
    cache = run_against_reference(chunks=(30,), pads=(0, 0))
    layer = cache.layers[0]
    assert layer.keys.shape[2] == 12, "after a prefill the tensors shrink to the budget"
    k = torch.randn(2, 2, 1, 8, dtype=torch.float64)
    cache.update(k, k, 0)
    h2o_attention(torch.randn(2, 4, 1, 8, dtype=torch.float64), layer, None, scale=1.0)
    assert layer.keys.shape[2] == 13 and layer.num_kept == 12
    for _ in range(3):
        cache.update(k, k, 0)
        h2o_attention(torch.randn(2, 4, 1, 8, dtype=torch.float64), layer, None, scale=1.0)
        assert layer.keys.shape[2] == 13 and layer.num_kept == 12
    assert cache.kv_bytes == 2 * 2 * 2 * 13 * 8 * 8  # keys + values, (B, Hkv, 13, D), fp64


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"budget": 4}, "budget"),  # < sinks + 1
        ({"budget": 0}, "budget"),
        ({"budget": -3}, "budget"),
        ({"budget": 0.0}, "budget"),
        ({"budget": 1.5}, "budget"),
        ({"budget": "1024"}, "budget"),
        ({"budget": True}, "budget"),
        ({"budget": 64, "recent_ratio": -0.1}, "recent_ratio"),
        ({"budget": 64, "recent_ratio": 1.1}, "recent_ratio"),
        ({"budget": 64, "recent_ratio": "half"}, "recent_ratio"),
        ({"budget": 64, "num_sink_tokens": -1}, "num_sink_tokens"),
        ({"budget": 64, "num_sink_tokens": 2.0}, "num_sink_tokens"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        H2OCache(**kwargs)


def test_policy_sizes():
    policy = H2OPolicy(budget=0.25, recent_ratio=0.5, num_sink_tokens=4)
    assert policy.budget_for(1000) == 250 and policy.budget_for(8) == 5  # never below sinks + 1
    assert H2OPolicy(budget=10, recent_ratio=1.0, num_sink_tokens=4).recent_tokens(10) == 6
    assert H2OPolicy(budget=10, recent_ratio=0.25).recent_tokens(10) == 2


def test_fractional_budget_is_fixed_by_the_first_forward():
    cache = H2OCache(0.5, num_sink_tokens=1)
    k = torch.randn(1, 1, 10, 4)
    cache.update(k, k, 0)
    h2o_attention(torch.randn(1, 1, 10, 4), cache.layers[0], None, scale=1.0)
    assert cache.layers[0].budget == 5 and cache.layers[0].num_kept == 5
    with pytest.raises(ValueError, match="pass an int budget"):
        cache.update(k, k, 0)


def test_crop_is_refused_clearly():
    cache = H2OCache(8)
    cache.update(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), 0)
    assert not cache.is_croppable
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(-1)


def _kept_after_steps(q, k, v, real, steps, *, budget, recent_ratio, sinks):
    """Drives one H2OCache layer (batch of one row) through ``steps``; returns its kept positions ``(Hkv, budget)``."""
    cache = H2OCache(budget, recent_ratio=recent_ratio, num_sink_tokens=sinks)
    seen = 0
    for size in steps:
        part = slice(seen, seen + size)
        keys, _ = cache.update(k[:, :, part], v[:, :, part], 0)
        h2o_attention(q[:, :, part], h2o_layer_of(keys), real[:, : seen + size], scale=q.shape[-1] ** -0.5)
        seen += size
    return cache.layers[0].positions[0]


def _reference_kept(q, k, v, steps, *, budget, recent_ratio, sinks, group):
    """The naive reference on an unpadded row: kept positions per KV head."""
    kept = []
    for h in range(k.shape[1]):
        ref, seen = ReferenceH2OHead(budget, recent_ratio, sinks), 0
        for size in steps:
            part = slice(seen, seen + size)
            ref.step(q[0, h * group : (h + 1) * group, part], k[0, h, part], v[0, h, part], [True] * size,
                     scale=q.shape[-1] ** -0.5)
            seen += size
        kept.append(ref.kept)
    return torch.tensor(kept)


@pytest.mark.parametrize("pads", [3, 8, 11])
def test_chunked_prefill_of_a_left_padded_row_is_the_unpadded_row_with_a_shorter_first_step(pads):
    """What docs/h2o.md states: chunk boundaries count pad columns, so a row with ``p`` left pads
    prefilled in chunks of ``C`` keeps what the same row *unpadded* keeps when its first step is
    ``C - p % C`` tokens and the next ones ``C`` (pads are never attended, never scored and evicted
    first); ``p % C == 0`` (8 here) is the same as no padding. Checked against the naive reference."""
    chunk, n, kv_heads, group, dim = 8, 30, 2, 2, 8
    settings = dict(budget=10, recent_ratio=0.2, sinks=1)
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(1, kv_heads * group, pads + n, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(1, kv_heads, pads + n, dim, generator=generator, dtype=torch.float64)
    v = torch.randn(1, kv_heads, pads + n, dim, generator=generator, dtype=torch.float64)
    real = torch.ones(1, pads + n, dtype=torch.bool)
    real[0, :pads] = False

    columns = [chunk] * ((pads + n) // chunk) + ([(pads + n) % chunk] if (pads + n) % chunk else [])
    padded = _kept_after_steps(q, k, v, real, columns, **settings) - pads

    first = chunk - pads % chunk
    shifted = [first] + [chunk] * ((n - first) // chunk) + ([(n - first) % chunk] if (n - first) % chunk else [])
    unpadded = [t[:, :, pads:] for t in (q, k, v)]
    assert torch.equal(padded, _kept_after_steps(*unpadded, real[:, pads:], shifted, **settings))
    assert torch.equal(padded, _reference_kept(*unpadded, shifted, group=group, **settings))

    plain = [chunk] * (n // chunk) + [n % chunk]
    if pads % chunk:  # the pad count really moves the boundaries: not what the row keeps unpadded
        assert not torch.equal(padded, _reference_kept(*unpadded, plain, group=group, **settings))
    else:
        assert torch.equal(padded, _reference_kept(*unpadded, plain, group=group, **settings))
