"""H2OCache inside ``generate()`` of real (tiny, random) models of every family."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from hf_sinklora import H2OCache
from hf_sinklora.cache import H2OLayer

from .families import FAMILY_NAMES, PAD, VOCAB, build, twins
from .h2o_reference import kept_from_probabilities

GREEDY = dict(do_sample=False, max_new_tokens=12, pad_token_id=PAD)


def prompt(batch_pads=(0,), n=40, seed=1):
    """``(input_ids, attention_mask)`` left-padded: row ``b`` starts with ``batch_pads[b]`` pads."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (len(batch_pads), n), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for b, pads in enumerate(batch_pads):
        attention_mask[b, :pads] = 0
    return input_ids.masked_fill(attention_mask == 0, PAD), attention_mask


def h2o_model(family):
    return build(family, "sf_attention", dtype=torch.float32).eval()


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("pads", [(0,), (0, 9)], ids=["one_row", "left_padded"])
def test_budget_covering_everything_reproduces_dynamic_cache(family, pads):
    model = h2o_model(family)
    input_ids, attention_mask = prompt(pads)
    expected = model.generate(input_ids, attention_mask=attention_mask, cache=DynamicCache(config=model.config), **GREEDY)
    cache = H2OCache(budget=1000)
    got = model.generate(input_ids, attention_mask=attention_mask, cache=cache, **GREEDY)
    assert torch.equal(got, expected)
    assert cache.get_seq_length() == input_ids.shape[1] + GREEDY["max_new_tokens"] - 1
    chunked = model.generate(input_ids, attention_mask=attention_mask, cache=H2OCache(1000), prefill_chunk_size=16, **GREEDY)
    assert torch.equal(chunked, expected)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_sampling_and_beam_search_with_full_budget_match_dynamic_cache(family):
    model = h2o_model(family)
    input_ids, attention_mask = prompt((0, 5))
    for options in (dict(do_sample=True, top_k=20, num_return_sequences=2), dict(num_beams=3, do_sample=False)):
        results = []
        for cache in (DynamicCache(config=model.config), H2OCache(1000)):
            torch.manual_seed(0)
            results.append(model.generate(input_ids, attention_mask=attention_mask, cache=cache, max_new_tokens=8,
                                          pad_token_id=PAD, **options))
        assert torch.equal(results[0], results[1]), options


def test_past_key_values_keyword_still_works():
    model = h2o_model("llama")
    input_ids, _ = prompt()
    with pytest.warns(FutureWarning):
        got = model.generate(input_ids, past_key_values=H2OCache(1000), **GREEDY)
    assert torch.equal(got, model.generate(input_ids, **GREEDY))


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gpt_neox", "qwen3_gqa_split"])
@pytest.mark.parametrize("pads", [(0,), (0, 6)], ids=["one_row", "left_padded"])
def test_kept_set_after_prefill_equals_eager_reference(family, pads):
    """One prefill of 40 tokens, budget 16: the kept set from eager attention probabilities."""
    h2o, eager = twins(family, "sf_attention", "eager", dtype=torch.float32)
    input_ids, attention_mask = prompt(pads)
    budget, recent_ratio, sinks = 16, 0.25, 4
    cache = H2OCache(budget, recent_ratio=recent_ratio, num_sink_tokens=sinks)
    with torch.no_grad():
        h2o.eval()(input_ids, attention_mask=attention_mask, cache=cache)
        probs = eager.eval()(input_ids, attention_mask=attention_mask, output_attentions=True, use_cache=False).attentions
    real = attention_mask.bool()
    for layer_idx, (layer, layer_probs) in enumerate(zip(cache.layers, probs, strict=True)):
        window = _layer_window(h2o, layer_idx)
        expected = kept_from_probabilities(
            layer_probs, layer.keys.shape[1], real, budget=budget, recent_ratio=recent_ratio, num_sink_tokens=sinks,
            sliding_window=window,
        )
        got = layer.positions
        assert got.shape == expected.shape == (len(pads), layer.keys.shape[1], budget)
        if window is None:
            assert torch.equal(got, expected), f"layer {layer_idx}"
        else:  # tokens that left the window are dead: which of them fill spare room is arbitrary
            live = got > input_ids.shape[1] - 1 - window
            assert torch.equal(got[live], expected[expected > input_ids.shape[1] - 1 - window])
    assert h2o.config.num_hidden_layers == len(cache.layers)


def _layer_window(model, layer_idx):
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types is not None and config.model_type not in ("mistral", "phi3"):
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


def test_decoding_keeps_the_budget_the_sinks_and_the_recent_window():
    model = h2o_model("llama")
    input_ids, _ = prompt(n=30)
    budget, sinks, recent = 12, 4, 6
    cache = H2OCache(budget, recent_ratio=0.5, num_sink_tokens=sinks)
    with torch.no_grad():
        logits = model(input_ids, cache=cache).logits
        seen = input_ids.shape[1]
        for _ in range(15):
            for layer in cache.layers:
                assert layer.num_kept == budget and layer.keys.shape[2] <= budget + 1
                positions = layer.positions
                assert (positions[..., :sinks] == torch.arange(sinks)).all()
                assert (positions[..., -recent:] == torch.arange(seen - recent, seen)).all()
            assert cache.get_seq_length() == seen
            logits = model(logits[:, -1:].argmax(-1), cache=cache).logits
            seen += 1


def test_chunked_prefill_never_attends_over_more_than_budget_plus_chunk(monkeypatch):
    model = h2o_model("qwen2")
    input_ids, _ = prompt(n=100)
    budget, chunk = 20, 16
    widths = []
    original = H2OLayer.update

    def spy(self, key_states, value_states, *args, **kwargs):
        keys, values = original(self, key_states, value_states, *args, **kwargs)
        widths.append(keys.shape[2])
        return keys, values

    monkeypatch.setattr(H2OLayer, "update", spy)
    cache = H2OCache(budget)
    model.generate(input_ids, cache=cache, prefill_chunk_size=chunk, **GREEDY)
    assert max(widths) == budget + chunk
    # memory really freed: every layer is back to budget (+1 spare decode slot)
    assert all(layer.keys.shape[2] == budget + 1 for layer in cache.layers)
    dynamic = DynamicCache(config=model.config)
    model.generate(input_ids, cache=dynamic, **GREEDY)
    dynamic_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dynamic.layers)
    assert cache.kv_bytes * (input_ids.shape[1] + GREEDY["max_new_tokens"] - 1) == dynamic_bytes * (budget + 1)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_left_padded_chunked_prefill_is_the_unpadded_row_with_a_shorter_first_step(family):
    """docs/h2o.md, "Left padding and prefill_chunk_size": generate cuts the padded prompt into
    column chunks of C, so a row with p left pads keeps, per layer and KV head, what the same row
    alone keeps when prefilled in steps of C - p % C, then C tokens."""
    model = h2o_model(family).double()
    pads, chunk, settings = 5, 8, dict(budget=10, recent_ratio=0.2, num_sink_tokens=1)
    input_ids, attention_mask = prompt((0, pads), n=30, seed=3)
    batched = H2OCache(**settings)
    with torch.no_grad():
        model.generate(input_ids, attention_mask=attention_mask, cache=batched, prefill_chunk_size=chunk,
                       do_sample=False, max_new_tokens=1, pad_token_id=PAD)  # stops right after the prefill

    row = input_ids[1:, pads:]
    first = chunk - pads % chunk
    alone, start = H2OCache(**settings), 0
    with torch.no_grad():
        for end in [first, *range(first + chunk, row.shape[1], chunk), row.shape[1]]:
            model(row[:, start:end], cache=alone)
            start = end
    for layer_idx, (padded, unpadded) in enumerate(zip(batched.layers, alone.layers, strict=True)):
        assert torch.equal(padded.positions[1] - pads, unpadded.positions[0]), f"layer {layer_idx}"


def test_small_budget_changes_generation():
    """The full-budget equalities above can fail: eviction really changes what the model sees."""
    model = h2o_model("llama")
    input_ids, _ = prompt(n=60)
    assert not torch.equal(model.generate(input_ids, cache=H2OCache(8), **GREEDY), model.generate(input_ids, **GREEDY))


def test_other_attention_implementations_are_refused_with_a_hint():
    model = build("llama", "sdpa", dtype=torch.float32).eval()
    input_ids, _ = prompt()
    with pytest.raises(ValueError, match="set_attn_implementation\\('sf_attention'\\)"):
        model.generate(input_ids, cache=H2OCache(16), **GREEDY)
    model.set_attn_implementation("sf_attention")
    model.generate(input_ids, cache=H2OCache(16), **GREEDY)


def test_training_mode_is_refused():
    model = h2o_model("llama").train()
    input_ids, _ = prompt()
    with pytest.raises(ValueError, match="model.eval\\(\\)"):
        model(input_ids, cache=H2OCache(16))


def test_caches_of_two_models_never_mix():
    """The attention finds its cache through the key tensor, not through global state."""
    first, second = h2o_model("llama"), h2o_model("gpt_neox")
    input_ids, _ = prompt(n=30)
    cache_a, cache_b = H2OCache(10), H2OCache(12)
    with torch.no_grad():
        first(input_ids, cache=cache_a)
        second(input_ids[:, :20], cache=cache_b)
        first(input_ids[:, :1], cache=cache_a)
    assert [layer.num_kept for layer in cache_a.layers] == [10, 10]
    assert [layer.num_kept for layer in cache_b.layers] == [12, 12]
    assert cache_a.get_seq_length() == 31 and cache_b.get_seq_length() == 20
