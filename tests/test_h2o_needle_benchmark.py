"""benchmarks/h2o_needle.py end to end on a tiny saved model: the table, the plot, and a budget that
covers the prompt giving the full cache's answers exactly (every policy, chunked prefill)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import h2o_needle  # noqa: E402


def test_sweep_writes_the_table_and_a_whole_budget_matches_the_full_cache(recipe_workspace, tmp_path):
    document = h2o_needle.main(["--model", str(recipe_workspace["base"]), "--length", "200", "--trials", "2",
                                "--depths", "0,1", "--budgets", "0.25,1", "--prefill-chunk-size", "8",
                                "--device", "cpu", "--output-dir", str(tmp_path), "--name", "needle"])
    saved = json.loads((tmp_path / "needle.json").read_text())
    assert saved["results"] == json.loads(json.dumps(document["results"]))
    assert (tmp_path / "needle.png").stat().st_size > 10_000
    full = saved["results"]["full cache"]
    assert set(full["per_depth"]) == {"0", "1"} and full["budget_tokens"] is None
    for policy in ("h2o", "streaming", "recent"):
        assert saved["results"][policy]["0.25"]["budget_tokens"] == 50
        whole = saved["results"][policy]["1"]
        assert whole["budget_tokens"] == 200
        assert [e["answer"] for e in whole["examples"]] == [e["answer"] for e in full["examples"]]


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        h2o_needle.parse_args(["--model", "m", "--length", "64", "--budgets", "0,0.5"])
    with pytest.raises(SystemExit):
        h2o_needle.parse_args(["--model", "m", "--length", "64", "--policies", "lru"])
