"""``attn_implementation="sf_attention"`` inside real (tiny, random) transformers models.

Every family is checked against the same weights whose attention is the independent dense
reference of the rule (:mod:`tests.reference`), registered here as its own attention
implementation. Nothing is downloaded: the models are built from explicit configs.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface

import hf_sinklora
from hf_sinklora.attention import sf_attention_mask

from .families import FAMILIES, FAMILY_NAMES, PAD, SF_PARAMS, VOCAB, build, twins
from .reference import dense_attention, describe_tokens, sf_reference_mask

REFERENCE = "sf_reference_test"
# Tight fp64 tolerances: both sides compute the same math, only the summation order differs.
TIGHT = dict(atol=1e-10, rtol=1e-8)
# transformers' eager attention takes its softmax in fp32 even for fp64 inputs
EAGER = dict(atol=1e-5, rtol=1e-5)
# ... and in fp64 casts its finfo(float64).min padding mask to -inf there, so fully masked
# (padding) query rows become NaN and spread to the whole row: padded batches are compared
# with eager in fp32
EAGER_FP32 = dict(atol=2e-5, rtol=1e-4)
# Gemma's RMSNorm runs in fp32 whatever the model dtype: gradient sums over differently laid
# out batches then differ at fp32 rounding
GEMMA_GRADS = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# The reference attention implementation
# ----------------------------------------------------------------------------------------

REFERENCE_CALLS: list[dict] = []
_TOLD: dict[str, list] = {}


@contextlib.contextmanager
def told_segments(rows: list[list[tuple[int, int]]]):
    """Tells the reference where each row's segments lie, ``[(start, length), ...]`` per row:
    it never detects them itself, so it shares no segment logic with the package."""
    _TOLD["rows"] = rows
    try:
        yield
    finally:
        _TOLD.clear()


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        sliding_window=None, softcap=None, **kwargs):
    """The SF-Attn rule straight from its definition, as a transformers attention function."""
    batch, num_heads, n, _ = query.shape
    assert module.training, "the reference implements the training-mode rule only"
    assert dropout == 0.0
    assert key.shape[2] == n, "whole sequences only (no KV cache)"
    assert "rows" in _TOLD, "run the reference inside told_segments(rows)"
    rows = _TOLD["rows"]
    if attention_mask is not None:
        assert attention_mask.ndim == 2, "the mask interface should hand over the 2-D padding mask"
        for b, row in enumerate(rows):  # the told segments are the real tokens
            told = [t for start, length in row for t in range(start, start + length)]
            assert attention_mask[b, -n:].bool().nonzero().flatten().tolist() == told
        kind = "padded"
    else:
        kind = "position_ids" if kwargs.get("position_ids") is not None else "plain"
    REFERENCE_CALLS.append(
        {"module": type(module).__name__, "sliding_window": sliding_window, "softcap": softcap, "kind": kind,
         "rows": rows}
    )
    segment_id, position = describe_tokens(n, rows)
    mask = sf_reference_mask(segment_id, position, num_heads, sliding_window=sliding_window,
                             **module.config.sf_attention)
    return dense_attention(query, key, value, mask, scale=scaling, softcap=softcap), None


transformers.AttentionInterface.register(REFERENCE, reference_attention)
AttentionMaskInterface.register(REFERENCE, sf_attention_mask)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------



def expected_layer_settings(model) -> list[tuple[int | None, float | None]]:
    """(sliding_window, softcap) each decoder layer should pass to the attention function."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    settings = []
    for layer_type in layer_types:
        if config.model_type in ("mistral", "phi3"):
            window = config.sliding_window
        else:
            window = config.sliding_window if layer_type == "sliding_attention" else None
        settings.append((window, getattr(config, "attn_logit_softcapping", None)))
    return settings


def right_padded_batch(n: int = 40, lengths=(40, 29), seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (len(lengths), n), generator=generator)
    attention_mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, length in enumerate(lengths):
        attention_mask[b, :length] = 1
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def left_padded_batch(n: int, lengths, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (len(lengths), n), generator=generator)
    attention_mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, length in enumerate(lengths):
        attention_mask[b, n - length :] = 1
    return input_ids.masked_fill(attention_mask == 0, PAD), attention_mask


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy in fp64 (transformers' own loss is computed in fp32)."""
    return torch.nn.functional.cross_entropy(
        logits[..., :-1, :].reshape(-1, logits.shape[-1]).double(), labels[..., 1:].reshape(-1),
        ignore_index=-100, reduction="sum",
    )


def loss_and_grads(model, **inputs):
    """Model output, fp64 summed token loss, and the parameter gradients of that loss."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs, use_cache=False)
    loss_sum = token_loss_sum(out.logits, inputs["labels"])
    loss_sum.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, loss_sum.detach(), grads


# ----------------------------------------------------------------------------------------
# 1. Train mode: loss and gradients against the dense reference
# ----------------------------------------------------------------------------------------


def layout_batch(layout: str, n: int = 40, lengths=(40, 29)):
    """``(inputs, rows the reference should find, real-token mask)`` for a batch layout."""
    if layout == "full":
        input_ids = right_padded_batch(n, lengths=(n,) * len(lengths))[0]
        inputs = dict(input_ids=input_ids, labels=input_ids.clone())
        return inputs, [[(0, n)] for _ in lengths], torch.ones_like(input_ids, dtype=torch.bool)
    if layout == "right_pad":
        input_ids, attention_mask, labels = right_padded_batch(n, lengths)
        rows = [[(0, length)] for length in lengths]
    elif layout == "left_pad":
        input_ids, attention_mask = left_padded_batch(n, lengths)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        rows = [[(n - length, length)] for length in lengths]
    else:
        raise ValueError(layout)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    return inputs, rows, attention_mask.bool()


def check_against_reference(family: str, layout: str, implementation: str = "sf_attention", **reference_params):
    sf_model, ref_model = twins(family, implementation, REFERENCE)
    if reference_params:
        hf_sinklora.configure_sf_attention(ref_model, **reference_params)
    sf_model.train()
    ref_model.train()
    inputs, rows, real = layout_batch(layout)

    REFERENCE_CALLS.clear()
    with told_segments(rows):
        ref_out, ref_loss, ref_grads = loss_and_grads(ref_model, **inputs)
    # the family really routes through the attention interface, with its per-layer settings
    assert len(REFERENCE_CALLS) == sf_model.config.num_hidden_layers
    assert [(c["sliding_window"], c["softcap"]) for c in REFERENCE_CALLS] == expected_layer_settings(ref_model)
    assert all(c["kind"] == ("position_ids" if layout == "full" else "padded") for c in REFERENCE_CALLS)

    sf_out, sf_loss, sf_grads = loss_and_grads(sf_model, **inputs)
    torch.testing.assert_close(sf_out.logits[real], ref_out.logits[real], **TIGHT)
    torch.testing.assert_close(sf_loss, ref_loss, **TIGHT)
    torch.testing.assert_close(sf_out.loss, ref_out.loss)  # transformers' own (fp32) loss
    assert sf_grads.keys() == ref_grads.keys()
    assert len(sf_grads) == len(list(sf_model.parameters()))
    for name in ref_grads:
        torch.testing.assert_close(sf_grads[name], ref_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_train_loss_and_gradients_match_dense_reference(family):
    """Right-padded batch (rows of 40 and 29 tokens: G = 10 and 8), every family."""
    check_against_reference(family, "right_pad")


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("layout", ["full", "left_pad"])
def test_train_other_layouts_match_dense_reference(family, layout):
    """No mask at all (the uniform fast path) and left padding."""
    check_against_reference(family, layout)


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split"])
def test_s2_attention_model_matches_reference_without_sinks(family):
    check_against_reference(family, "right_pad", implementation="s2_attention", num_sink_tokens=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sf_attention_is_what_the_model_calls(family, monkeypatch):
    """``sf_attention`` (not some fallback) runs in every layer, with 2-D masks in the padded case."""
    calls = []
    original = transformers.AttentionInterface._global_mapping["sf_attention"]

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((module.layer_idx, None if attention_mask is None else attention_mask.ndim))
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "sf_attention", spy)
    model = build(family, "sf_attention").train()
    input_ids, attention_mask, labels = right_padded_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
    assert calls == [(i, 2) for i in range(model.config.num_hidden_layers)]


# ----------------------------------------------------------------------------------------
# 5. The comparison above can fail: SF-Attn is not full causal attention at n = 40
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2", "gpt_neox"])
def test_train_mode_differs_from_full_causal(family):
    baseline = FAMILIES[family][2]
    tol = TIGHT if baseline == "sdpa" else EAGER
    sf_model, dense_model = twins(family, "sf_attention", baseline)
    sf_model.train()
    dense_model.train()
    # no padding: (transformers' own fp64 eager Gemma2 turns right-padded rows into NaN, a
    # fully masked sliding-window row; the padded comparison is the reference test above)
    input_ids = right_padded_batch(lengths=(40, 40))[0]
    with torch.no_grad():
        sf_logits = sf_model(input_ids=input_ids, use_cache=False).logits
        dense_logits = dense_model(input_ids=input_ids, use_cache=False).logits
    gap = (sf_logits - dense_logits).abs()
    # G = 10: up to the shifted heads' first boundary (G//2 = 5) every head sees the whole prefix,
    # so the outputs match full attention there
    torch.testing.assert_close(sf_logits[:, :5], dense_logits[:, :5], **tol)
    assert gap.max() > 1e-2
    # and not just a few positions: most queries beyond the first group differ
    assert (gap[:, 12:].amax(-1) > 1e-6).float().mean() > 0.9
    # the same model in eval mode is full attention again
    sf_model.eval()
    dense_model.eval()
    with torch.no_grad():
        sf_eval = sf_model(input_ids=input_ids).logits
        dense_eval = dense_model(input_ids=input_ids).logits
    torch.testing.assert_close(sf_eval, dense_eval, **tol)


# ----------------------------------------------------------------------------------------
# 2. Eval mode: dense causal attention, equal to sdpa (eager for soft-capping)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eval_logits_and_greedy_generation_match_baseline(family):
    sf_model, base_model, tol = _eval_twins(family)

    # no padding mask at all
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, VOCAB, (2, 24), generator=generator)
    with torch.no_grad():
        got = sf_model(input_ids=input_ids).logits
        want = base_model(input_ids=input_ids).logits
    torch.testing.assert_close(got, want, **tol)

    # left padding (generation-style); only real tokens are compared
    input_ids, attention_mask = left_padded_batch(24, lengths=(24, 15))
    with torch.no_grad():
        got = sf_model(input_ids=input_ids, attention_mask=attention_mask).logits
        want = base_model(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], **tol)

    # greedy generation with a KV cache; 12 + 8 tokens so that the window (8) binds while decoding
    prompt, prompt_mask = left_padded_batch(12, lengths=(12, 7), seed=4)
    kwargs = dict(attention_mask=prompt_mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                  pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        got = sf_model.generate(prompt, **kwargs)
        want = base_model.generate(prompt, **kwargs)
    assert got.sequences.shape == (2, 20)
    assert torch.equal(got.sequences, want.sequences)
    for step, (a, b) in enumerate(zip(got.logits, want.logits)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"step {step}: {m}")


def _generate_both(sf_model, base_model, prompt, **kwargs):
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=PAD, output_logits=True,
                  return_dict_in_generate=True, **kwargs)
    with torch.no_grad():
        return sf_model.generate(prompt, **kwargs), base_model.generate(prompt, **kwargs)


def _assert_same_generation(got, want, tol):
    assert torch.equal(got.sequences, want.sequences)
    for step, (a, b) in enumerate(zip(got.logits, want.logits)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"step {step}: {m}")


def _eval_twins(family: str):
    """``sf_attention`` and the family's eval baseline with the same weights, in eval mode, and the
    tolerance to compare them with (fp64 against sdpa, fp32 against eager)."""
    baseline = FAMILIES[family][2]
    dtype = torch.float64 if baseline == "sdpa" else torch.float32
    sf_model, base_model = twins(family, "sf_attention", baseline, dtype=dtype)
    return sf_model.eval(), base_model.eval(), TIGHT if baseline == "sdpa" else EAGER_FP32


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eval_static_cache_generation_matches_baseline(family):
    """StaticCache: keys are ``max_cache_len`` long and queries sit at a cache offset; the mask
    must hide the unfilled slots exactly as sdpa's does (this crashed on a (B, seen) mask)."""
    sf_model, base_model, tol = _eval_twins(family)
    prompt, prompt_mask = left_padded_batch(12, lengths=(12, 7), seed=4)
    got, want = _generate_both(sf_model, base_model, prompt, attention_mask=prompt_mask, cache_implementation="static")
    _assert_same_generation(got, want, tol)


@pytest.mark.parametrize("family", ["mistral", "qwen3_sliding", "gemma2"])
def test_eval_sliding_window_cache_with_prefill_chunks_matches_baseline(family):
    """Sliding-window cache layers keep ``window - 1`` keys (a key offset); prefill chunks of 5
    and 20 + 8 tokens make the window (8) bind in prefill and decoding alike."""
    sf_model, base_model, tol = _eval_twins(family)
    prompt, prompt_mask = left_padded_batch(20, lengths=(20, 13), seed=5)
    got, want = _generate_both(sf_model, base_model, prompt, attention_mask=prompt_mask, prefill_chunk_size=5)
    _assert_same_generation(got, want, tol)


def _llama4_chunked(attn_implementation: str):
    """A tiny Llama4 text model whose layers attend in chunks of 8: a mask overlay (``chunked_overlay``)."""
    from transformers import Llama4TextConfig

    config = Llama4TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, intermediate_size_mlp=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_chunk_size=8, num_local_experts=1,
        num_experts_per_tok=1, moe_layers=[], no_rope_layers=[1, 1], max_position_embeddings=256,
        initializer_range=0.2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    hf_sinklora.configure_sf_attention(config, **SF_PARAMS)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float64)


def test_chunked_attention_overlay_eval_matches_sdpa_and_sf_refuses_it():
    sf_model, base_model = _llama4_chunked("sf_attention"), _llama4_chunked("sdpa")
    sf_model.load_state_dict(base_model.state_dict())
    sf_model.eval()
    base_model.eval()
    input_ids, attention_mask = left_padded_batch(20, lengths=(20, 13))
    with torch.no_grad():  # chunks of 8 bind at 20 tokens: dropping the overlay changes the logits
        got = sf_model(input_ids=input_ids, attention_mask=attention_mask).logits
        want = base_model(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], **TIGHT)
    _assert_same_generation(*_generate_both(sf_model, base_model, input_ids, attention_mask=attention_mask), TIGHT)
    _assert_same_generation(
        *_generate_both(sf_model, base_model, input_ids, attention_mask=attention_mask, cache_implementation="static"),
        TIGHT,
    )

    sf_model.train()  # SF-Attn cannot apply chunks: a clear error, not a silent full pattern
    with pytest.raises(ValueError, match=r"SF-Attn \(training.*adds chunked_overlay"):
        sf_model(input_ids=input_ids, attention_mask=attention_mask)
    sf_model.eval()
    with pytest.raises(ValueError, match="H2OCache supports causal masks.*adds chunked_overlay"):
        with torch.no_grad():
            sf_model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2, pad_token_id=PAD,
                              cache=hf_sinklora.H2OCache(budget=16))


# ----------------------------------------------------------------------------------------
# 3. save_pretrained / from_pretrained
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2", "gpt_neox"])
def test_save_and_reload_keeps_settings(family, tmp_path):
    model = build(family, "sf_attention")
    settings = hf_sinklora.configure_sf_attention(model, num_sink_tokens=3, group_size=7)
    model.save_pretrained(tmp_path)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sf_attention", dtype=torch.float64)
    assert reloaded.config._attn_implementation == "sf_attention"
    assert reloaded.config.sf_attention == settings.to_dict() == model.config.sf_attention
    assert reloaded.config.sf_attention["num_sink_tokens"] == 3
    assert reloaded.config.sf_attention["group_size"] == 7
    assert reloaded.config.sf_attention["shifted_head_ratio"] == FAMILIES[family][1].get("shifted_head_ratio", 0.5)

    # the reloaded model computes the same SF-Attn (train mode) as the saved one
    model.train()
    reloaded.train()
    input_ids, attention_mask, labels = right_padded_batch()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).loss, model(**inputs).loss, **TIGHT)

    # and a plain reload keeps the settings too, ready for a later switch to sf_attention
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa" if family != "gemma2" else "eager")
    assert plain.config.sf_attention == settings.to_dict()


# ----------------------------------------------------------------------------------------
# 4. Packed rows (TRL padding-free): each segment is its own sequence
# ----------------------------------------------------------------------------------------

PACKED_LENGTHS = (17, 23, 12)


def _packed_examples(seed: int = 5, lengths=PACKED_LENGTHS):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=generator) for length in lengths]


def _trl_packed_batch(examples, pad_to_multiple_of=None):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling  # not exported as trl.DataCollator...

    collator = DataCollatorForLanguageModeling(pad_token_id=PAD, padding_free=True, pad_to_multiple_of=pad_to_multiple_of)
    batch = collator([{"input_ids": ids.tolist()} for ids in examples])
    # what the padding-free collator hands to the model: no attention_mask, restarting positions;
    # trl >= 1.16 adds the flash-attn varlen keys, older releases (down to the floor) do not
    required = {"input_ids", "labels", "position_ids"}
    varlen = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"}
    assert set(batch) in (required, required | varlen)
    lengths = [len(ids) for ids in examples]
    total = sum(lengths)
    padded = total if pad_to_multiple_of is None else -(-total // pad_to_multiple_of) * pad_to_multiple_of
    assert batch["input_ids"].shape == (1, padded)
    expected_positions = torch.cat([torch.arange(length) for length in lengths] + [torch.zeros(padded - total)])
    assert torch.equal(batch["position_ids"][0], expected_positions.long())
    bounds = [0] + list(torch.tensor(lengths).cumsum(0).tolist())
    if "cu_seq_lens_q" in batch:
        assert batch["cu_seq_lens_q"].tolist()[: len(bounds)] == bounds
    assert (batch["labels"][0, bounds[:-1]] == -100).all()
    return batch


def _segments_separately(model, examples):
    """Logits (concatenated) and summed fp64 token loss of each segment run as its own row."""
    logits, loss_sum = [], 0.0
    for ids in examples:
        out = model(input_ids=ids[None], use_cache=False)
        logits.append(out.logits[0])
        loss_sum = loss_sum + token_loss_sum(out.logits, ids[None])
    return torch.cat(logits), loss_sum


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3_gqa_split", "gemma2", "phi3", "gpt_neox"])
@pytest.mark.parametrize("packing", ["trl_collator", "position_ids_only"])
def test_packed_row_equals_separate_sequences(family, packing):
    model = build(family, "sf_attention").train()
    examples = _packed_examples()
    batch = _trl_packed_batch(examples)
    if packing == "position_ids_only":
        batch = {key: batch[key] for key in ("input_ids", "position_ids", "labels")}
    num_targets = sum(length - 1 for length in PACKED_LENGTHS)

    model.zero_grad(set_to_none=True)
    # the collator's batch exactly as a trainer would pass it (use_cache left at the config default)
    packed = model(**batch) if packing == "trl_collator" else model(**batch, use_cache=False)
    packed_loss_sum = token_loss_sum(packed.logits, batch["labels"])
    packed_loss_sum.backward()
    packed_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    separate_logits, separate_loss_sum = _segments_separately(model, examples)
    separate_loss_sum.backward()
    separate_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    torch.testing.assert_close(packed.logits[0], separate_logits, **TIGHT)
    torch.testing.assert_close(packed_loss_sum, separate_loss_sum, **TIGHT)
    # transformers' (fp32) loss on the collator's labels: the mean over the same targets
    torch.testing.assert_close(packed.loss.double(), separate_loss_sum.detach() / num_targets, atol=1e-5, rtol=1e-6)
    grad_tol = GEMMA_GRADS if model.config.model_type.startswith("gemma") else TIGHT
    for name, grad in separate_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, **grad_tol, msg=lambda m: f"{name}: {m}")

    # eval mode ("full"): causal attention inside each segment, like running them one by one
    model.eval()
    with torch.no_grad():
        packed_eval = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        separate_eval = torch.cat([model(input_ids=ids[None]).logits[0] for ids in examples])
    torch.testing.assert_close(packed_eval[0], separate_eval, **TIGHT)


@pytest.mark.parametrize("family", ["llama", "qwen3_gqa_split", "gemma2"])
@pytest.mark.parametrize(
    "lengths,pad_to_multiple_of",
    [
        (PACKED_LENGTHS, None),
        ((17, 1, 3, 23, 8), 16),  # a 1-token and a 3-token (< sinks) segment, then 4 padding tokens
    ],
)
def test_packed_row_matches_dense_reference(family, lengths, pad_to_multiple_of):
    """The packed row against the reference too (told the segments from the example lengths)."""
    sf_model, ref_model = twins(family, "sf_attention", REFERENCE)
    sf_model.train()
    ref_model.train()
    batch = _trl_packed_batch(_packed_examples(seed=6, lengths=lengths), pad_to_multiple_of=pad_to_multiple_of)
    bounds = [0] + list(torch.tensor(lengths).cumsum(0).tolist())
    segments = [(s, e - s) for s, e in zip(bounds, bounds[1:])]
    # TRL's padding positions are 0, 0, ...: each padding token is a 1-token segment of its own
    segments += [(t, 1) for t in range(bounds[-1], batch["input_ids"].shape[1])]
    REFERENCE_CALLS.clear()
    with told_segments([segments]):
        ref_out, ref_loss, ref_grads = loss_and_grads(ref_model, **batch)
    assert all(c["kind"] == "position_ids" for c in REFERENCE_CALLS)
    sf_out, sf_loss, sf_grads = loss_and_grads(sf_model, **batch)
    torch.testing.assert_close(sf_out.logits, ref_out.logits, **TIGHT)
    torch.testing.assert_close(sf_loss, ref_loss, **TIGHT)
    for name in ref_grads:
        torch.testing.assert_close(sf_grads[name], ref_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")


def test_group_size_really_depends_on_segment_length():
    """Guard for the packed test: the three segments have different G (5, 6, 3)."""
    assert [math.ceil(length * SF_PARAMS["group_size_ratio"]) for length in PACKED_LENGTHS] == [5, 6, 3]
