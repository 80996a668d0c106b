"""benchmarks/real_checkpoint.py --quick on the real SmolLM2-135M checkpoint: every part end to end (JSON
keys, PNG, the resume file), then a rerun that reuses every stored unit; and the data helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_checkpoint  # noqa: E402

BOOKS = ROOT.parent / "shared" / "data" / "gutenberg"


def test_spread_windows_are_disjoint_and_fixed():
    documents = [torch.arange(100), torch.arange(100, 150)]
    windows = real_checkpoint.spread_windows(documents, 10, 4)
    assert [int(w[0]) for w in windows] == [0, 30, 70, 110]  # windows 0, 3, 7, 11 of 15
    assert real_checkpoint.tokens_sha(windows) == real_checkpoint.tokens_sha(real_checkpoint.spread_windows(documents, 10, 4))
    with pytest.raises(ValueError, match="fewer than 16"):
        real_checkpoint.spread_windows(documents, 10, 16)


def test_progress_reuses_a_unit_only_under_the_same_settings(tmp_path):
    path = tmp_path / "progress.json"
    progress = real_checkpoint.Progress(path)
    progress.put("zero_shot", "sdpa", {"length": 2048, "books": ("a",)}, {"perplexity": 25.0})
    again = real_checkpoint.Progress(path)
    assert again.get("zero_shot", "sdpa", {"length": 2048, "books": ["a"]}) == {"perplexity": 25.0}
    assert again.get("zero_shot", "sdpa", {"length": 1024, "books": ["a"]}) is None
    assert not (tmp_path / "progress.json.tmp").exists()


def test_goal_check_needs_every_row():
    row = lambda accuracy, ppl: {"passkey": {"accuracy": accuracy}, "held_out": {"perplexity": ppl}}  # noqa: E731
    assert real_checkpoint.goal_check({"base": row(1.0, 20.0)})["met"] is None
    goal = real_checkpoint.goal_check({"base": row(1.0, 20.0), "sf": row(0.96, 20.3), "full": row(1.0, 20.0)})
    assert goal["met"] is True and goal["sf_ppl_within_2pct_of_full"]["ratio"] == pytest.approx(1.015)
    goal = real_checkpoint.goal_check({"base": row(1.0, 20.0), "sf": row(0.9, 20.0), "full": row(1.0, 20.0)})
    assert goal["met"] is False and goal["sf_keeps_95pct_of_base_passkey"]["met"] is False


def test_overlapping_books_are_refused():
    with pytest.raises(SystemExit):
        real_checkpoint.parse_args(["--held-out-books", "katrine.txt", "--finetune-books", "katrine.txt"])


@pytest.mark.slow
@pytest.mark.real
def test_quick_mode_end_to_end(real_checkpoint_dir, tmp_path):
    if not BOOKS.is_dir():
        pytest.skip(f"the Gutenberg books are not at {BOOKS}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "benchmarks" / "real_checkpoint.py"), "--quick", "--no-progress",
               "--model", str(real_checkpoint_dir), "--books", str(BOOKS), "--output-dir", str(tmp_path / "out")]
    subprocess.run(command, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)
    out = tmp_path / "out"
    assert (out / "real_checkpoint.png").stat().st_size > 0
    document = json.loads((out / "real_checkpoint.json").read_text())
    assert {"settings", "zero_shot", "in_window_finetune", "eviction", "goal", "pending"} <= set(document)
    assert document["pending"] == []
    assert set(document["zero_shot"]) == {"sdpa", "sf_attention", "s2_attention", "longlora_eager_s2"}
    assert document["zero_shot"]["longlora_eager_s2"]["longlora_calls"] > 0
    tuned = document["in_window_finetune"]
    assert set(tuned) == {"base", "sf", "s2", "full"}
    for method in ("sf", "s2", "full"):
        assert len(tuned[method]["training"]["losses"]) == 2  # one logged loss per step
        assert tuned[method]["passkey"]["prompts"] == 2
    # train-mode SDPA is eval-mode SDPA (dropout 0): the base's held-out perplexity is the zero-shot SDPA row's
    assert tuned["base"]["held_out"]["perplexity"] == pytest.approx(document["zero_shot"]["sdpa"]["perplexity"], rel=1e-4)
    assert set(document["eviction"]) == {"full", "h2o", "streaming", "recent"}
    cell = document["eviction"]["h2o"]["128"]["0.5"]
    assert {"passkey", "perplexity"} <= set(cell) and cell["perplexity"]["budget_tokens"] == 64
    assert document["settings"]["held_out_books"] == ["news_from_nowhere.txt", "katrine.txt"]
    assert {"sf_keeps_95pct_of_base_passkey", "sf_ppl_within_2pct_of_full", "met"} <= set(document["goal"])
    progress = json.loads((out / "real_checkpoint_progress.json").read_text())
    assert len(progress["units"]["eviction"]) == 2 * 4 and len(progress["units"]["in_window_finetune"]) == 4

    # a rerun reuses every stored unit, even with the fine-tuning runs gone (a fresh machine)
    shutil.rmtree(out / "work")
    rerun = subprocess.run(command, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert "computing" not in rerun.stderr
    assert json.loads((out / "real_checkpoint.json").read_text())["zero_shot"] == document["zero_shot"]
