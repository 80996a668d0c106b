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
