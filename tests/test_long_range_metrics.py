"""Long-range perplexity (``experiment.long_range_metrics``) against the model's own logits."""

from __future__ import annotations

import math
import random

import torch

from hf_sinklora.data.local_corpus import stdlib_source_files
from hf_sinklora.data.sources import load_texts
from hf_sinklora.evaluation.cache_quality import eviction_cache
from hf_sinklora.experiment.long_range import TextSource, long_range_documents
from hf_sinklora.experiment.long_range_metrics import (
    long_range_perplexity,
    long_range_summary,
    streamed_long_range_perplexity,
)

from .eval_helpers import english_tokenizer, one_torch_thread, tiny_llama  # noqa: F401


def _documents(length: int = 192, count: int = 4):
    tokenizer = english_tokenizer(512)
    source = TextSource(tokenizer, load_texts(stdlib_source_files(limit=6)))
    return tokenizer, long_range_documents(source, length, count, threshold=48, seed=3)


def test_summary_scores_exactly_the_masked_tokens_by_kind():
    _, documents = _documents()
    generator = torch.Generator().manual_seed(0)
    token_nll = [torch.rand(len(d.input_ids) - 1, generator=generator) * 5 for d in documents]
    summary = long_range_summary(documents, token_nll)
    for kind in ("repeat", "kv", "rest"):
        picked = [float(nll[t - 1]) for d, nll in zip(documents, token_nll) for t in range(1, len(d.input_ids))
                  if (d.long_range_mask[t] if kind != "rest" else not d.long_range_mask[t])
                  and (kind == "rest" or d.kind == kind)]
        assert summary[kind]["tokens"] == len(picked) > 0
        assert math.isclose(summary[kind]["ppl"], math.exp(sum(picked) / len(picked)), rel_tol=1e-9)
    assert summary["long_range"]["tokens"] == summary["repeat"]["tokens"] + summary["kv"]["tokens"]


def test_perplexity_of_whole_documents_matches_the_logits_and_a_full_streamed_cache():
    tokenizer, documents = _documents()
    model = tiny_llama(len(tokenizer), max_positions=256)
    ids = torch.tensor([d.input_ids for d in documents])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    expected = long_range_summary(documents, list(nll))
    whole = long_range_perplexity(model, documents, 192)
    assert math.isclose(whole["long_range"]["ppl"], expected["long_range"]["ppl"], rel_tol=1e-4)
    # a budget that keeps every token evicts nothing: streaming in chunks gives the same numbers
    streamed = streamed_long_range_perplexity(model, documents, lambda n: eviction_cache("h2o", 1.0, n), chunk_size=32)
    assert math.isclose(streamed["long_range"]["ppl"], expected["long_range"]["ppl"], rel_tol=1e-4)
    # and a small one does not
    evicted = streamed_long_range_perplexity(model, documents, lambda n: eviction_cache("recent", 0.1, n), chunk_size=32)
    assert not math.isclose(evicted["long_range"]["ppl"], expected["long_range"]["ppl"], rel_tol=1e-3)
