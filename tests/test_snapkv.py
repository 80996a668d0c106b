"""SnapKVPolicy: the kept set of a prefill against a dense eager computation of the observation
window's attention, the cache contract of H2OCache (a budget covering everything is DynamicCache),
and the settings' checks."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hf_sinklora.cache import EvictingCache, SnapKVPolicy

from .families import build, twins
from .h2o_reference import snapkv_kept_from_probabilities
from .test_h2o_generate import GREEDY, prompt


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gpt_neox"])
@pytest.mark.parametrize("pads", [(0,), (0, 6)], ids=["one_row", "left_padded"])
@pytest.mark.parametrize("window,pooling", [(8, 5), (3, 1), (1, 7)])
def test_kept_set_after_prefill_equals_eager_reference(family, pads, window, pooling):
    """One prefill of 40 tokens, budget 16: what the eager probabilities of the last queries keep."""
    model, eager = twins(family, "sf_attention", "eager", dtype=torch.float32)
    input_ids, attention_mask = prompt(pads)
    policy = SnapKVPolicy(16, window=window, pooling=pooling, num_sink_tokens=4)
    cache = EvictingCache(policy)
    with torch.no_grad():
        model.eval()(input_ids, attention_mask=attention_mask, cache=cache)
        probs = eager.eval()(input_ids, attention_mask=attention_mask, output_attentions=True, use_cache=False).attentions
    for layer_idx, (layer, layer_probs) in enumerate(zip(cache.layers, probs, strict=True)):
        expected = snapkv_kept_from_probabilities(
            layer_probs, layer.keys.shape[1], attention_mask.bool(), budget=16, window=window, pooling=pooling,
            num_sink_tokens=4,
        )
        assert torch.equal(layer.positions, expected), f"layer {layer_idx}"


def test_the_window_decides_and_pooling_smooths():
    """The kept set follows the last queries: moving the window changes it (the check can fail)."""
    model, eager = twins("llama", "sf_attention", "eager", dtype=torch.float32)
    input_ids, attention_mask = prompt((0,), n=60)
    kept = []
    for window in (2, 20):
        cache = EvictingCache(SnapKVPolicy(24, window=window, pooling=1))
        with torch.no_grad():
            model.eval()(input_ids, cache=cache)
        kept.append(cache.layers[0].positions)
    assert not torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen3_gqa_split"])
@pytest.mark.parametrize("pads", [(0,), (0, 5)], ids=["one_row", "left_padded"])
def test_budget_covering_everything_reproduces_dynamic_cache(family, pads):
    model = build(family, "sf_attention", dtype=torch.float32).eval()
    input_ids, attention_mask = prompt(pads)
    with torch.no_grad():
        full = model.generate(input_ids, attention_mask=attention_mask, cache=DynamicCache(config=model.config), **GREEDY)
        snap = model.generate(input_ids, attention_mask=attention_mask, cache=EvictingCache(SnapKVPolicy(1000)), **GREEDY)
        chunked = model.generate(input_ids, attention_mask=attention_mask, cache=EvictingCache(SnapKVPolicy(1000)),
                                 prefill_chunk_size=16, **GREEDY)
    assert torch.equal(full, snap) and torch.equal(full, chunked)


def test_decoding_keeps_the_budget_the_sinks_and_the_window():
    model = build("llama", "sf_attention", dtype=torch.float32).eval()
    input_ids, _ = prompt((0,), n=50)
    cache = EvictingCache(SnapKVPolicy(20, window=6))
    with torch.no_grad():
        out = model.generate(input_ids, cache=cache, **GREEDY)
    seen = out.shape[1] - 1  # the last token generated is never fed back
    for layer in cache.layers:
        assert layer.num_kept == 20
        positions = layer.positions
        assert (positions[..., :4] == torch.arange(4)).all(), "sinks stay"
        assert (positions[..., -6:] == torch.arange(seen - 6, seen)).all(), "the newest window stays"


def test_beams_and_sampling_with_a_covering_budget_match_dynamic_cache():
    model = build("llama", "sf_attention", dtype=torch.float32).eval()
    input_ids, _ = prompt((0, 0))
    for options in (dict(num_beams=3, do_sample=False), dict(do_sample=True, top_k=5)):
        results = []
        for cache in (DynamicCache(config=model.config), EvictingCache(SnapKVPolicy(1000))):
            torch.manual_seed(0)
            with torch.no_grad():
                results.append(model.generate(input_ids, cache=cache, max_new_tokens=8, pad_token_id=0, **options))
        assert torch.equal(results[0], results[1]), options


@pytest.mark.parametrize("kwargs,name", [
    (dict(window=0), "window"), (dict(window=2.5), "window"), (dict(pooling=4), "pooling"),
    (dict(pooling=0), "pooling"), (dict(num_sink_tokens=-1), "num_sink_tokens"),
])
def test_bad_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SnapKVPolicy(32, **kwargs)


def test_the_policy_is_frozen_and_observes_its_window():
    policy = SnapKVPolicy(0.25, window=8)
    assert policy.observation_window(100) == 8 and policy.observation_window(5) == 5
    with pytest.raises(AttributeError):
        policy.window = 4


def test_the_cli_offers_every_policy():
    from hf_sinklora.evaluation.cache_quality import POLICIES
    from hf_sinklora.evaluation.cli import CACHE_POLICY_NAMES

    assert set(CACHE_POLICY_NAMES) == set(POLICIES)
    assert isinstance(POLICIES["snapkv"](10), SnapKVPolicy)
