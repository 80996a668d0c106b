"""CUDA checks, run by ``benchmarks/gpu_check.sh`` on a GPU machine (skipped without CUDA): the
SDPA, flash-attn and flex backends in bf16/fp16 against the dense reference (outputs and gradients),
``backend="auto"`` taking grouped SDPA when flash-attn cannot run, and H2O generation equal to
``DynamicCache`` when the budget covers everything."""

from __future__ import annotations

import random

import pytest
import torch

from hf_sinklora.attention import interface, sf_attention_forward

from .families import build
from .helpers import FakeAttention, random_scenario
from .test_sf_rule import HEAD_LAYOUTS, run_against_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("seed", range(12))
def test_sdpa_backend_on_cuda_matches_reference(seed, dtype):
    scenario = random_scenario(2000 + seed)
    scenario.params["backend"] = "sdpa"
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, dtype=dtype, seed=seed, device="cuda")


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("seed", range(12))
def test_flash_attn_backend_on_cuda_matches_reference(seed, dtype):
    pytest.importorskip("flash_attn", reason="flash-attn is not installed on this machine")
    scenario = random_scenario(3000 + seed)
    scenario.holes, scenario.softcap = [], None
    if scenario.kind == "holes":
        scenario.kind = "right_pad"
    scenario.sliding_window = None  # a binding window falls back to SDPA by design
    scenario.params["backend"] = "flash_attn"
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, dtype=dtype, seed=seed, device="cuda")


# Flex compiles one kernel per dtype, GQA flag and score_mod (then shapes turn dynamic): the
# scenarios keep GQA and leave soft-capping to one test, so the compiles fit gpu_check.sh's budget.
FLEX_HEAD_LAYOUTS = [(4, 2), (6, 2), (8, 2), (4, 1)]
FLEX_HEAD_DIM = 16  # the Triton kernel's floor


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("seed", range(4))
def test_flex_backend_on_cuda_matches_reference(seed, dtype):
    scenario = random_scenario(4000 + seed)
    scenario.softcap = None
    scenario.params["backend"] = "flex"
    num_heads, num_kv_heads = random.Random(seed).choice(FLEX_HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, dtype=dtype, seed=seed, device="cuda",
                          head_dim=FLEX_HEAD_DIM)


def test_flex_backend_on_cuda_with_softcap_matches_reference():
    scenario = random_scenario(4100)
    scenario.softcap = 2.0
    scenario.params["backend"] = "flex"
    run_against_reference(scenario, 4, 2, dtype=torch.bfloat16, device="cuda", head_dim=FLEX_HEAD_DIM)


def test_auto_on_cuda_without_flash_attn_runs_grouped_sdpa(monkeypatch):
    """Grouped SDPA beat flex on an H100, so auto takes it: flex is never called, the result is backend="sdpa"'s."""
    monkeypatch.setattr(interface, "can_use_flash", lambda query: False)  # as on a machine without flash-attn

    def flex_called(*args, **kwargs):
        raise AssertionError("backend='auto' called flex")

    monkeypatch.setattr(interface, "flex_sf_attention", flex_called)
    q, k, v = (torch.randn(1, heads, 64, FLEX_HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for heads in (4, 2, 2))
    outputs = []
    for backend in ("auto", "sdpa"):
        module = FakeAttention({"backend": backend}, num_key_value_groups=2).train()
        out, _ = sf_attention_forward(module, q, k, v, None)
        out.float().sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2"])
def test_h2o_generation_on_cuda_equals_dynamic_cache(family):
    from transformers import DynamicCache

    from hf_sinklora import H2OCache

    model = build(family, "sf_attention", dtype=torch.float32).to("cuda").eval()
    input_ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    options = dict(do_sample=False, max_new_tokens=12, pad_token_id=0, prefill_chunk_size=16)
    with torch.no_grad():
        full = model.generate(input_ids, cache=DynamicCache(config=model.config), **options)
        evicting = model.generate(input_ids, cache=H2OCache(1000), **options)
    assert torch.equal(full, evicting)


# --- H2O scores from the fused kernel's log-sum-exp (cache/lse_scores.py) ------------------------


def _general_path_mass(query, keys, values, scale):
    """What the general path (materialised probabilities, scored_attention) gives for one prefill step."""
    from hf_sinklora import H2OCache
    from hf_sinklora.cache import h2o_layer_of, scored_attention

    cache = H2OCache(10**6)
    past, q = keys.shape[2] - query.shape[2], query.shape[2]
    if past:
        cache.update(keys[:, :, :past], values[:, :, :past], 0)
        h2o_layer_of(cache.layers[0].keys).end_step(torch.zeros(keys.shape[0], keys.shape[1], past, device=keys.device))
    layer = h2o_layer_of(cache.update(keys[:, :, past:], values[:, :, past:], 0)[0])
    return scored_attention(query, layer, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("past,num_heads,num_kv_heads,head_dim", [(0, 4, 4, 64), (300, 8, 2, 128), (37, 6, 3, 80)])
def test_lse_scores_on_cuda_match_the_float64_reference(dtype, past, num_heads, num_kv_heads, head_dim):
    """Fused attention + log-sum-exp key mass (Triton) against float64 eager attention: its error is at
    most twice the general path's (which materialises the probabilities in the same dtype)."""
    from hf_sinklora.cache.lse_scores import lse_scored_attention

    from .test_h2o_lse_scores import eager_step

    generator = torch.Generator().manual_seed(past + head_dim)
    q = 700
    query = torch.randn(2, num_heads, q, head_dim, generator=generator).to("cuda", dtype)
    keys = torch.randn(2, num_kv_heads, past + q, head_dim, generator=generator).to("cuda", dtype)
    values = torch.randn(2, num_kv_heads, past + q, head_dim, generator=generator).to("cuda", dtype)
    scale = head_dim**-0.5
    ref_out, ref_mass = eager_step(query, keys, values, scale)
    out, mass = lse_scored_attention(query, keys, values, scale=scale)
    general_out, general_mass = _general_path_mass(query, keys, values, scale)
    floor = 1e-5 if dtype == torch.float32 else 2e-3
    mass_error = (mass.double() - ref_mass).abs().max().item()
    assert mass_error <= 2 * (general_mass.double() - ref_mass).abs().max().item() + floor, mass_error
    out_error = (out.double() - ref_out).abs().max().item()
    assert out_error <= 2 * (general_out.double() - ref_out).abs().max().item() + floor, out_error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_key_mass_on_cuda_equals_blocked_matmuls(dtype):
    from hf_sinklora.cache.key_mass_triton import triton_key_mass
    from hf_sinklora.cache.lse_scores import blocked_key_mass

    generator = torch.Generator().manual_seed(7)
    query = torch.randn(1, 8, 1000, 64, generator=generator).to("cuda", dtype)
    keys = torch.randn(1, 2, 1500, 64, generator=generator).to("cuda", dtype)
    lse = (torch.randn(1, 8, 1000, generator=generator).abs() + 6.0).cuda()
    got = triton_key_mass(query, keys, lse, scale=0.125)
    expected = blocked_key_mass(query, keys, lse, scale=0.125)
    torch.testing.assert_close(got, expected, atol=1e-4 if dtype == torch.float32 else 2e-2, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_h2o_prefill_on_cuda_keeps_what_the_general_path_keeps(dtype, monkeypatch):
    """One 240-token prefill, budget 60, of a random Llama: the kept sets of the log-sum-exp path
    and of the materialised-probabilities path (fp32: equal; bf16: rounding may swap near-ties)."""
    from hf_sinklora import H2OCache
    from hf_sinklora.cache import lse_scores

    model = build("llama", "sf_attention", dtype=dtype).to("cuda").eval()
    input_ids = torch.randint(3, model.config.vocab_size, (1, 240), generator=torch.Generator().manual_seed(3)).cuda()
    kept = []
    for devices in (lse_scores.LSE_PATH_DEVICE_TYPES, frozenset()):
        monkeypatch.setattr(lse_scores, "LSE_PATH_DEVICE_TYPES", devices)
        cache = H2OCache(60)
        with torch.no_grad():
            model(input_ids, cache=cache)
        kept.append(torch.stack([layer.positions for layer in cache.layers]))
    if dtype == torch.float32:
        assert torch.equal(kept[0], kept[1])
    else:
        same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(kept[0].flatten(0, -2), kept[1].flatten(0, -2)))
        assert same / kept[0].numel() >= 0.9, same / kept[0].numel()
