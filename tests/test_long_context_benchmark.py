"""benchmarks/long_context.py: the shares' arithmetic, and --quick end to end (every method and seed,
shares, the eviction table, the goal block, the PNGs; longlora really trained through its attention)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sinklora.data.local_corpus import stdlib_source_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import long_context  # noqa: E402


def test_shares_of_the_full_gain_on_accuracy_and_log_perplexity():
    assert long_context.share("passkey_at_4L", interpolated=0.1, full=0.9, value=0.5) == pytest.approx(0.5)
    expected = (math.log(100) - math.log(50)) / (math.log(100) - math.log(25))
    assert long_context.share("long_range_ppl_at_4L", interpolated=100, full=25, value=50) == pytest.approx(expected)
    assert long_context.share("held_out_ppl_at_4L", interpolated=100, full=25, value=200) < 0  # worse than no tuning
    assert long_context.share("passkey_at_4L", interpolated=0.2, full=0.2, value=0.6) is None  # no full gain
    assert long_context.share("held_out_ppl_at_4L", interpolated=100, full=99.99, value=90) is None
    assert long_context.share("long_range_ppl_at_4L", interpolated=100, full=25, value=float("nan")) is None


def test_spread_leaves_out_null_seeds():
    assert long_context.spread([0.5, None, 1.0]) == {"mean": 0.75, "min": 0.5, "max": 1.0,
                                                     "stdev": pytest.approx(0.3535534), "seeds_counted": 2}
    assert long_context.spread([None])["mean"] is None


def test_quick_mode_end_to_end(tmp_path):
    data = [str(p) for p in stdlib_source_files(limit=8)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "long_context.py"), "--quick",
               "--train-data", *data[:6], "--eval-data", *data[6:], "--cache-dir", str(tmp_path / "cache"),
               "--work-dir", str(tmp_path / "work"), "--output-dir", str(tmp_path / "out")]
    subprocess.run(command, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
    out = tmp_path / "out"
    document = json.loads((out / "long_context_quick.json").read_text())
    for suffix in ("passkey", "shares", "h2o"):
        assert (out / f"long_context_quick_{suffix}.png").stat().st_size > 0
    assert {"settings", "environment", "base", "data", "models", "shares", "h2o", "goal", "timings_s"} <= set(document)

    methods, seeds = ["full", "s2", "sf", "longlora"], ["0", "1"]
    models = document["models"]
    assert set(models["base"]["passkey"]["per_length"]) == {"128"}
    assert set(models["interpolated"]["passkey"]["per_length"]) == {"128", "256", "512"}
    assert list(models["finetuned"]) == methods
    for method in methods:
        assert list(models["finetuned"][method]) == seeds
        for entry in models["finetuned"][method].values():
            assert set(entry["passkey"]["per_length"]) == {"128", "256", "512"}
            assert set(entry["held_out"]) == {"128", "512"}
            assert {"repeat", "kv", "long_range", "rest"} <= set(entry["long_range"])
    for entry in models["finetuned"]["longlora"].values():  # trained through LongLoRA's eager S2, not s2_attention
        assert entry["training"]["training_attention"] == "longlora_eager_s2"
        assert entry["training"]["longlora_training_calls"] > 0
    assert models["finetuned"]["s2"]["0"]["training"]["training_attention"] == "s2_attention"

    shares = document["shares"]
    assert set(shares["methods"]) == {"s2", "sf", "longlora"}
    for by_metric in shares["methods"].values():
        assert set(by_metric) == {"passkey_at_4L", "long_range_ppl_at_4L", "held_out_ppl_at_4L"} == set(shares["null_when"])
        for entry in by_metric.values():
            assert set(entry["per_seed"]) == set(seeds)
            assert {"mean", "min", "max", "stdev", "seeds_counted"} <= set(entry)

    sweep = document["h2o"]["models"]["full seed 0"]
    assert {"passkey_at_4L", "long_range_ppl_at_4L"} <= set(sweep["full_cache"])
    assert set(sweep["policies"]) == {"h2o", "streaming", "recent"}
    for by_budget in sweep["policies"].values():
        assert set(by_budget) == {"0.25"}
        assert by_budget["0.25"]["budget_tokens_documents"] == 128
    assert sweep["full_cache"]["long_range_ppl_at_4L"] == pytest.approx(
        models["finetuned"]["full"]["0"]["long_range"]["long_range"]["ppl"], rel=1e-4)  # streamed = one forward

    goal = document["goal"]
    assert {"base_min_depth_at_L", "interpolated_at_4L", "full_at_4L", "sf_within_5_points_of_full",
            "sf_ahead_of_s2", "sf_ahead_of_longlora", "met"} <= set(goal)
    assert isinstance(goal["met"], bool)
    assert not any("reused" in e["training"] for by_seed in models["finetuned"].values() for e in by_seed.values())

    # a stopped benchmark goes on where it was: the same run is measured again, a changed one retrained
    again = [*command, "--reuse-adapters", "--methods", "full", "--seeds", "0", "--h2o-models", "", "--name", "again"]
    subprocess.run(again, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
    rerun = json.loads((out / "again.json").read_text())["models"]["finetuned"]["full"]["0"]
    assert rerun["training"]["reused"] is True
    assert rerun["passkey"] == models["finetuned"]["full"]["0"]["passkey"]
    subprocess.run([*again, "--finetune-lr", "1e-3"], check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
    assert "reused" not in json.loads((out / "again.json").read_text())["models"]["finetuned"]["full"]["0"]["training"]


def test_a_given_base_must_be_unscaled_and_pretrained_at_the_base_context(recipe_workspace):
    import argparse

    base = str(recipe_workspace["base"])  # a tiny Llama with 64 positions, plain RoPE
    assert long_context.given_base(argparse.Namespace(base_model=base, base_context=64)) == Path(base)
    with pytest.raises(ValueError, match="--base-context=128"):
        long_context.given_base(argparse.Namespace(base_model=base, base_context=128))
    with pytest.raises(SystemExit):
        long_context.parse_args(["--base-model", base, "--base-context", "64", "--text-only-reference"])


def test_an_interpolated_checkpoint_is_not_a_base(recipe_workspace, tmp_path):
    import argparse

    from transformers import AutoConfig

    from hf_sinklora import extend_context

    config = AutoConfig.from_pretrained(recipe_workspace["base"])
    extend_context(config, 256)  # x4, max_position_embeddings 256
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unscaled"):
        long_context.given_base(argparse.Namespace(base_model=str(tmp_path), base_context=256))
