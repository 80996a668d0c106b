"""CUDA checks, run by ``benchmarks/gpu_check.sh`` on a GPU machine (skipped without CUDA): the
SDPA and flash-attn backends in bf16/fp16 against the dense reference (outputs and gradients), and
H2O generation equal to ``DynamicCache`` when the budget covers everything."""

from __future__ import annotations

import random

import pytest
import torch

from .families import build
from .helpers import random_scenario
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
