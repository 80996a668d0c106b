"""Strided perplexity: windows score every token once, and PPL matches a naive per-token reference."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sinklora.evaluation import evaluate_perplexity, perplexity, plan_windows, tokenize_documents

from .eval_helpers import english_tokenizer, one_torch_thread, tiny_llama  # noqa: F401 (autouse fixture)

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    return tiny_llama(VOCAB)


@pytest.fixture(scope="module")
def tokenizer():
    return english_tokenizer()


def context_begin(token: int, length: int, stride: int) -> int:
    """Reference: token t is scored by the first window k (inputs [kS, kS + L)) that holds token t - 1."""
    k = max(0, math.ceil((token - length) / stride))
    return k * stride


def naive_token_nll(model, ids: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """One forward per token over exactly its context; (n - 1,) NLLs of tokens 1..n-1."""
    out = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = context_begin(t, length, stride)
            assert 1 <= t - begin <= length
            logits = model(input_ids=ids[None, begin:t]).logits[0, -1]
            out.append(torch.nn.functional.cross_entropy(logits[None].double(), ids[t : t + 1]))
    return torch.stack(out)


@pytest.mark.parametrize("num_tokens", [1, 2, 5, 17, 33, 34, 35, 100])
@pytest.mark.parametrize(("length", "stride"), [(16, 16), (16, 1), (16, 5), (16, 15), (2, 1), (2, 2), (33, 32)])
def test_windows_score_each_token_once_with_its_first_covering_window(num_tokens, length, stride):
    windows = plan_windows(num_tokens, length, stride)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert scored == list(range(1, num_tokens))  # every token but the first, once, in order
    for k, window in enumerate(windows):
        assert window.begin == k * stride
        assert 1 <= window.input_length <= length
        assert window.begin < window.score_from < window.end <= num_tokens
        for t in range(window.score_from, window.end):
            assert window.begin == context_begin(t, length, stride)


@pytest.mark.parametrize(("length", "stride"), [(32, 32), (32, 8), (24, 1), (40, 17)])
def test_perplexity_matches_naive_reference(model, length, stride):
    generator = torch.Generator().manual_seed(length + stride)
    # a long document, one shorter than L, one of a single token (nothing to score), one of L + 1
    documents = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (90, 11, 1, length + 1)]
    result = perplexity(model, documents, length, stride, keep_token_nll=True, progress=False)

    reference = [naive_token_nll(model, d, length, stride) if len(d) > 1 else torch.zeros(0, dtype=torch.float64) for d in documents]
    for got, expected in zip(result.token_nll, reference):
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    expected_sum = float(torch.cat(reference).sum())
    assert result.tokens_scored == 89 + 10 + 0 + length
    assert result.nll_sum == pytest.approx(expected_sum, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected_sum / result.tokens_scored), rel=1e-6)
    assert result.windows == sum(len(plan_windows(len(d), length, stride)) for d in documents)
    assert result.documents == 3 and result.short_documents == 1


def test_stride_equal_length_is_disjoint_chunks_scored_by_the_models_own_loss(model):
    """S = L: inputs are disjoint L-token chunks; checked against transformers' own ``labels`` loss."""
    ids = torch.randint(0, VOCAB, (1 + 3 * 20,), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, ids, 20, progress=False)
    total = 0.0
    with torch.no_grad():
        for begin in range(0, 60, 20):
            chunk = ids[begin : begin + 21]  # 20 inputs predict the 20 tokens after the first
            loss = model(input_ids=chunk[None], labels=chunk[None]).loss  # mean over 20 predictions
            total += float(loss) * 20
    assert result.windows == 3 and result.tokens_scored == 60
    assert result.nll_sum == pytest.approx(total, rel=1e-5)


def test_batching_and_input_forms_do_not_change_the_result(model):
    generator = torch.Generator().manual_seed(3)
    documents = [torch.randint(0, VOCAB, (n,), generator=generator) for n in (70, 45, 70)]
    one = perplexity(model, documents, 16, 6, batch_size=1, progress=False)
    many = perplexity(model, [d.tolist() for d in documents], 16, 6, batch_size=5, progress=False)
    assert many.windows == one.windows and many.tokens_scored == one.tokens_scored
    assert many.nll_sum == pytest.approx(one.nll_sum, rel=1e-5)
    square = perplexity(model, torch.stack([documents[0], documents[0]]), 16, 6, progress=False)
    alone = perplexity(model, documents[0], 16, 6, progress=False)
    assert square.nll_sum == pytest.approx(2 * alone.nll_sum, rel=1e-5)


def test_model_mode_is_restored(model):
    model.train()
    perplexity(model, torch.arange(40) % VOCAB, 16, progress=False)
    assert model.training
    model.eval()


def test_evaluate_perplexity_scores_the_same_tokens_at_every_length(tokenizer):
    model = tiny_llama(len(tokenizer), seed=1)
    texts = ["The grass is green. " * 40, "def f(x):\n    return x + 1\n" * 30, "tiny"]
    result = evaluate_perplexity(model, tokenizer, texts, [16, 64], stride=8, max_tokens=300, progress=False)
    documents = tokenize_documents(tokenizer, texts, max_tokens=300)
    assert result["tokens"] == sum(len(d) for d in documents) == 300
    for length in (16, 64):
        row = result["results"][str(length)]
        assert row["tokens_scored"] == sum(len(d) - 1 for d in documents)
        direct = perplexity(model, documents, length, 8, progress=False)
        assert row["perplexity"] == pytest.approx(direct.perplexity, rel=1e-6)
    assert result["settings"]["stride"] == 8 and result["settings"]["lengths"] == [16, 64]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context_length": 1}, "context_length"),
        ({"context_length": 8, "stride": 9}, "stride"),
        ({"context_length": 8, "stride": 0}, "stride"),
        ({"context_length": 8, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_parameter(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(model, torch.arange(20), progress=False, **kwargs)


def test_nothing_to_score_is_an_error(model, tokenizer):
    with pytest.raises(ValueError, match="token_ids"):
        perplexity(model, [[5], []], 8, progress=False)
    with pytest.raises(ValueError, match="texts"):
        evaluate_perplexity(model, tokenizer, [], [8], progress=False)
    with pytest.raises(ValueError, match="stride"):
        evaluate_perplexity(model, tokenizer, ["some text here"], [8, 4], stride=6, progress=False)


def test_warns_when_the_context_exceeds_unscaled_positions(caplog):
    model = tiny_llama(VOCAB, max_positions=16)
    with caplog.at_level("WARNING", logger="hf_sinklora.evaluation.perplexity"):
        perplexity(model, torch.arange(40) % VOCAB, 16, progress=False)
        assert not caplog.records
        perplexity(model, torch.arange(40) % VOCAB, 32, progress=False)
        assert "exceeds max_position_embeddings=16" in caplog.text
    caplog.clear()
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with caplog.at_level("WARNING", logger="hf_sinklora.evaluation.perplexity"):
        perplexity(model, torch.arange(40) % VOCAB, 32, progress=False)
    assert not caplog.records
