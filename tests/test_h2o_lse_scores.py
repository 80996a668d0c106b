"""H2O scores from a fused kernel's log-sum-exp (cache/lse_scores.py, cache/key_mass_triton.py)
against dense eager attention probabilities."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_sinklora.cache import lse_scores
from hf_sinklora.cache.lse_scores import (
    attention_with_lse,
    blocked_key_mass,
    key_mass_from_lse,
    lse_path_applies,
    lse_scored_attention,
)

from .test_h2o_layer import run_against_reference


def eager_step(query, keys, values, scale):
    """Dense reference: ``out (B, q, Hq, D)`` and the key mass ``(B, Hkv, slots)`` of a step whose
    ``q`` queries are the last ``q`` of ``slots`` tokens in order (float64 throughout)."""
    batch, num_heads, q, dim = query.shape
    num_kv_heads, slots = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    logits = query.double() @ k.transpose(-1, -2) * scale
    index = torch.arange(slots, device=query.device)
    future = index[None, :] > (slots - q + index[:q])[:, None]
    probs = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    mass = probs.sum(dim=2).view(batch, num_kv_heads, group, slots).mean(dim=2)
    return (probs @ v).transpose(1, 2), mass


def random_step(batch=2, kv_heads=2, group=3, q=9, past=5, dim=16, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, kv_heads * group, q, dim, generator=generator).to(dtype)
    keys = torch.randn(batch, kv_heads, past + q, dim, generator=generator).to(dtype)
    values = torch.randn(batch, kv_heads, past + q, dim, generator=generator).to(dtype)
    return query, keys, values


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_with_lse_matches_eager(causal, dtype):
    query, keys, values = random_step(kv_heads=3, group=1, q=11, past=0 if causal else 4, dtype=dtype)
    out, lse = attention_with_lse(query, keys, values, scale=0.3, causal=causal)
    logits = query.double() @ keys.double().transpose(-1, -2) * 0.3
    if causal:
        logits = logits.masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    tolerance = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(lse.double(), logits.logsumexp(-1), **tolerance)
    torch.testing.assert_close(out.double(), logits.softmax(-1) @ values.double(), **tolerance)


def test_causal_attention_with_lse_refuses_a_rectangle():
    query, keys, values = random_step(q=4, past=2)
    with pytest.raises(ValueError, match="q == k"):
        attention_with_lse(query, keys[:, :1].expand(-1, 6, -1, -1), values[:, :1].expand(-1, 6, -1, -1),
                           scale=1.0, causal=True)


@pytest.mark.parametrize("past", [0, 1, 7])
@pytest.mark.parametrize("kv_heads,group", [(2, 3), (1, 4), (3, 1)])
def test_lse_scored_attention_matches_eager(past, kv_heads, group):
    query, keys, values = random_step(kv_heads=kv_heads, group=group, past=past, seed=past + group)
    out, mass = lse_scored_attention(query, keys, values, scale=0.25)
    ref_out, ref_mass = eager_step(query, keys, values, 0.25)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(mass.double(), ref_mass, atol=1e-6, rtol=1e-6)  # key mass is float32
    # every query's probabilities sum to one: the mass adds up to the queries per KV head
    torch.testing.assert_close(mass.sum(-1).double(), torch.full(mass.shape[:2], 9.0, dtype=torch.float64))


@pytest.mark.parametrize("chunk_elements", [1, 37, 10**6])
def test_blocked_key_mass_is_independent_of_the_chunk(chunk_elements):
    query, keys, values = random_step(q=13, past=6, seed=5)
    _, lse = attention_with_lse(query, keys.repeat_interleave(3, 1)[:, :, 6:], values.repeat_interleave(3, 1)[:, :, 6:],
                                scale=0.25, causal=True)
    _, lse_past = attention_with_lse(query, keys.repeat_interleave(3, 1)[:, :, :6], values.repeat_interleave(3, 1)[:, :, :6],
                                     scale=0.25, causal=False)
    mass = blocked_key_mass(query, keys, torch.logaddexp(lse, lse_past), scale=0.25, chunk_elements=chunk_elements)
    torch.testing.assert_close(mass.double(), eager_step(query, keys, values, 0.25)[1], atol=1e-6, rtol=1e-6)


def test_a_wrong_log_sum_exp_is_caught():
    """The comparison can fail: a normaliser off by log(2) halves every probability."""
    query, keys, values = random_step(q=6, past=0)
    _, lse = attention_with_lse(query, keys.repeat_interleave(3, 1), values.repeat_interleave(3, 1), scale=0.25, causal=True)
    mass = key_mass_from_lse(query, keys, lse + torch.log(torch.tensor(2.0)), scale=0.25)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mass.double(), eager_step(query, keys, values, 0.25)[1])


def test_key_mass_implementation_is_checked():
    query, keys, _ = random_step(q=3, past=0)
    with pytest.raises(ValueError, match="implementation must be one of"):
        key_mass_from_lse(query, keys, torch.zeros(2, 6, 3), scale=1.0, implementation="cuda")


def test_which_steps_take_the_lse_path():
    real = torch.ones(2, 5, dtype=torch.bool)
    cuda = torch.device("cuda")
    assert lse_path_applies(cuda, 5, True, None, None, None)
    assert lse_path_applies(cuda, 5, True, real, None, None)
    assert not lse_path_applies(torch.device("cpu"), 5, True, None, None, None), "slower than the general path there"
    assert not lse_path_applies(cuda, 1, True, None, None, None), "decoding keeps the general path"
    assert not lse_path_applies(cuda, 5, False, None, None, None), "padding or free slots"
    assert not lse_path_applies(cuda, 5, True, real.index_fill(1, torch.tensor([0]), False), None, None)
    assert not lse_path_applies(cuda, 5, True, None, 4, None), "sliding window"
    assert not lse_path_applies(cuda, 5, True, None, None, 30.0), "soft-capping"


def test_prefill_without_padding_takes_the_lse_path_and_matches_the_reference(monkeypatch):
    """With the path switched on for the CPU, H2O's step-by-step reference still holds."""
    calls = []
    original = lse_scores.lse_scored_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(sys.modules["hf_sinklora.cache.scored_attention"], "lse_scored_attention", spy)
    monkeypatch.setattr(lse_scores, "LSE_PATH_DEVICE_TYPES", frozenset({"cpu", "cuda"}))
    run_against_reference(chunks=(20, 1, 1, 1), pads=(0, 0))
    run_against_reference(chunks=(7, 7, 7, 3, 1, 1), pads=(0, 0), kv_heads=1, group=4, seed=1)
    assert calls == [20, 7, 7, 7, 3], "every multi-token step of an unpadded batch, no decoding step"
    calls.clear()
    run_against_reference(chunks=(7, 7, 1), pads=(2, 0))
    assert calls == [], "a padded batch keeps the general path while padding is in the cache"


TRITON_CHECK = r"""
import json, sys, torch
from hf_sinklora.cache.key_mass_triton import triton_key_mass
from hf_sinklora.cache.lse_scores import blocked_key_mass
results = []
for batch, kv_heads, group, q, past, dim in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(q + past)
    query = torch.randn(batch, kv_heads * group, q, dim, generator=g)
    keys = torch.randn(batch, kv_heads, past + q, dim, generator=g)
    lse = torch.randn(batch, kv_heads * group, q, generator=g).abs() + 3.0
    results.append((triton_key_mass(query, keys, lse, scale=0.3) - blocked_key_mass(query, keys, lse, scale=0.3)).abs().max().item())
print(json.dumps(results))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)")
def test_triton_key_mass_matches_blocked_matmuls_in_the_interpreter():
    """The CUDA kernel, run by Triton's interpreter on CPU tensors: several blocks of each kind
    (slots past the diagonal, padded query and slot blocks, a head dim that is not a power of 2)."""
    cases = [(1, 1, 1, 70, 0, 16), (2, 2, 3, 40, 150, 24), (1, 3, 2, 130, 5, 32)]
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split"])
def test_models_on_the_lse_path_keep_the_eager_reference_set_and_generate_as_dynamic_cache(family, monkeypatch):
    """The path switched on for the CPU: a real model's prefill keeps what eager probabilities say,
    and a budget covering everything generates DynamicCache's tokens (chunked prefill included)."""
    from transformers import DynamicCache

    from hf_sinklora import H2OCache

    from .families import build
    from .test_h2o_generate import test_kept_set_after_prefill_equals_eager_reference

    calls = []
    original = lse_scores.lse_scored_attention
    monkeypatch.setattr(lse_scores, "LSE_PATH_DEVICE_TYPES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(sys.modules["hf_sinklora.cache.scored_attention"], "lse_scored_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    test_kept_set_after_prefill_equals_eager_reference(family, (0,))
    assert calls, "the prefill went through the log-sum-exp path"
    model = build(family, "sf_attention").eval()
    input_ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    options = dict(do_sample=False, max_new_tokens=8, pad_token_id=0, prefill_chunk_size=16)
    with torch.no_grad():
        full = model.generate(input_ids, cache=DynamicCache(config=model.config), **options)
        evicting = model.generate(input_ids, cache=H2OCache(1000), **options)
    assert torch.equal(full, evicting)
