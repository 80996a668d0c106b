"""Perplexity of text streamed through KV caches: the full cache equals one plain forward."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from hf_sinklora import H2OCache
from hf_sinklora.cli import main
from hf_sinklora.evaluation import cache_budget_sweep, perplexity, streamed_nll, streamed_token_nll

from .eval_helpers import english_tokenizer, one_torch_thread, tiny_llama  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(96, seed=2)


def documents(lengths=(130, 70), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (n,), generator=generator) for n in lengths]


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_streaming_through_the_full_cache_equals_one_forward(model, chunk_size):
    segment = documents((64,))[0]
    nll, scored = streamed_nll(model, segment, DynamicCache(config=model.config), chunk_size)
    reference = perplexity(model, segment, 64, progress=False)  # one window over the whole segment
    assert scored == reference.tokens_scored == 63
    assert nll == pytest.approx(reference.nll_sum, rel=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 16])
def test_token_nll_through_the_full_cache_equals_one_forward_token_by_token(model, chunk_size):
    segment = documents((64,))[0]
    nll = streamed_token_nll(model, segment, DynamicCache(config=model.config), chunk_size)
    reference = perplexity(model, segment, 64, keep_token_nll=True, progress=False).token_nll[0]
    assert nll.shape == reference.shape == (63,)
    torch.testing.assert_close(nll, reference, rtol=1e-4, atol=1e-5)
    evicting = streamed_token_nll(model, segment, H2OCache(8), chunk_size)
    assert streamed_nll(model, segment, H2OCache(8), chunk_size)[0] == pytest.approx(float(evicting.sum()), rel=1e-5)
    assert not torch.allclose(evicting[-20:], reference[-20:], atol=1e-3)  # 8 kept tokens change later predictions


def test_a_budget_covering_the_segment_changes_nothing_and_small_ones_do(model):
    result = cache_budget_sweep(model, documents(), 64, budgets=(0.1, 1.0), chunk_size=1, progress=False)
    assert result["segments"] == 3  # 130 -> 2 segments, 70 -> 1; remainders dropped
    assert result["tokens_scored"] == 3 * 63
    full = result["full"]["perplexity"]
    reference = perplexity(model, [d[s : s + 64] for d, s in ((documents()[0], 0), (documents()[0], 64), (documents()[1], 0))],
                           64, progress=False).perplexity
    assert full == pytest.approx(reference, rel=1e-5)
    for policy in ("h2o", "streaming", "recent"):
        assert result["results"][policy]["1"]["perplexity"] == pytest.approx(full, rel=1e-5)
        assert result["results"][policy]["0.1"]["budget_tokens"] == 6
        assert result["results"][policy]["0.1"]["perplexity"] != pytest.approx(full, rel=1e-3)


def test_policies_are_the_caches_they_name(model):
    segment = documents((40,))[0]
    for name, cache in (("streaming", H2OCache(8, recent_ratio=1.0)), ("recent", H2OCache(8, recent_ratio=1.0, num_sink_tokens=0))):
        expected = streamed_nll(model, segment, cache)[0]
        result = cache_budget_sweep(model, [segment], 40, budgets=(0.2,), policies=(name,), progress=False)
        assert result["results"][name]["0.2"]["budget_tokens"] == 8
        assert result["results"][name]["0.2"]["perplexity"] == pytest.approx(torch.tensor(expected / 39).exp().item())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(policies=("lru",)), "unknown policies"),
        (dict(budgets=(0.0,)), "budgets"),
        (dict(budgets=(1.5,)), "budgets"),
        (dict(length=500), "no document holds 500 tokens"),
    ],
)
def test_bad_sweep_settings(model, kwargs, message):
    arguments = dict(length=64, budgets=(0.5,), progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        cache_budget_sweep(model, documents(), **arguments)


def test_eval_h2o_cli_writes_json_and_plot(tmp_path, capsys):
    tokenizer = english_tokenizer()
    base = tmp_path / "base"
    tiny_llama(len(tokenizer), seed=1).save_pretrained(base)
    tokenizer.save_pretrained(base)
    text = tmp_path / "text.txt"
    text.write_text("The grass is green. The sky is blue. The sun is yellow. " * 40)
    out = tmp_path / "h2o.json"
    assert main(["eval-h2o", "--model", str(base), "--data", str(text), "--length", "48", "--budgets", "0.25,1",
                 "--policies", "h2o,recent", "--chunk-size", "4", "--max-segments", "2", "--output", str(out),
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["segments"] == 2 and set(report["results"]) == {"h2o", "recent"}
    assert report["results"]["h2o"]["1"]["ppl_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "full cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval-h2o", "--model", str(base), "--data", str(text), "--attn-implementation", "sdpa",
              "--length", "48", "--output", str(tmp_path / "x.json"), "--no-progress"])
