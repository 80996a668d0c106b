"""The copy-free CPU path for whole rows (``attention/uniform_cpu.py``) against the dense reference."""

from __future__ import annotations

import pytest
import torch

from hf_sinklora.attention import uniform_cpu
from hf_sinklora.attention.uniform_cpu import HeadRun, group_bounds, head_runs

from .helpers import Scenario
from .test_sf_rule import run_against_reference


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach the copy-free path, so a test knows it ran."""
    seen = []
    original = uniform_cpu.UniformGroupedAttention.apply

    def counting(*args):
        seen.append(args)
        return original(*args)

    monkeypatch.setattr(uniform_cpu.UniformGroupedAttention, "apply", counting)
    return seen


def test_group_bounds_cover_the_sequence_once():
    assert group_bounds(10, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert group_bounds(10, 4, 2) == [(0, 2), (2, 6), (6, 10)]
    assert group_bounds(3, 8, 4) == [(0, 3)]


@pytest.mark.parametrize(
    "classes,repeats,expected",
    [
        # aligned classes: one run each
        ([(0, 4, False), (4, 8, True)], 2, [(0, 4, 0, 2, 0), (4, 8, 2, 4, 3)]),
        # the class boundary splits a GQA group: its heads form runs reading one key head
        ([(0, 2, False), (2, 4, True)], 4, [(0, 2, 0, 1, 0), (2, 4, 0, 1, 3)]),
        ([(0, 1, False), (1, 6, True)], 2, [(0, 1, 0, 1, 0), (1, 2, 0, 1, 3), (2, 6, 1, 3, 3)]),
        ([(0, 3, False), (3, 6, True)], 2, [(0, 2, 0, 1, 0), (2, 3, 1, 2, 0), (3, 4, 1, 2, 3), (4, 6, 2, 3, 3)]),
    ],
)
def test_head_runs_keep_the_gqa_mapping(classes, repeats, expected):
    runs = head_runs(classes, repeats, group_size=6)
    assert runs == [HeadRun(*run) for run in expected]
    for run in runs:  # query head q reads key head q // repeats in every run
        ratio = (run.q_end - run.q_start) // (run.kv_end - run.kv_start)
        assert all(run.kv_start + (q - run.q_start) // ratio == q // repeats for q in range(run.q_start, run.q_end))


@pytest.mark.parametrize(
    "n,heads,kv_heads,batch,params",
    [
        (64, 8, 2, 2, {}),  # G = 16, sinks, half the heads shifted, GQA
        (67, 4, 1, 3, {}),  # odd length, classes split a GQA group
        (61, 6, 2, 1, {"group_size": 10}),  # fixed G, many groups, a short tail
        (50, 3, 1, 2, {"group_size": 7, "shifted_head_ratio": 1.0}),  # odd G, every head shifted
        (40, 5, 5, 2, {"num_sink_tokens": 0}),  # S2 (no sinks), no GQA
        (45, 4, 2, 1, {"group_size": 8, "num_sink_tokens": 4}),  # shifted first group == sinks
        (33, 4, 2, 2, {"group_size": 8, "num_sink_tokens": 2, "shifted_head_ratio": 0.25}),
        (5, 4, 2, 2, {"group_size": 16}),  # n < G: one group
    ],
)
def test_matches_dense_reference(calls, n, heads, kv_heads, batch, params):
    scenario = Scenario(seq_len=n, rows=[[(0, n)]] * batch, kind="plain", params=params)
    run_against_reference(scenario, heads, kv_heads)
    assert calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(calls, dtype):
    scenario = Scenario(seq_len=48, rows=[[(0, 48)], [(0, 48)]], kind="plain", params={})
    run_against_reference(scenario, 4, 2, dtype=dtype)
    assert calls


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(seq_len=40, rows=[[(0, 40)], [(0, 31)]], kind="right_pad", params={}),
        Scenario(seq_len=40, rows=[[(0, 17), (17, 23)]], kind="packed_pos", params={}),
        # the shifted heads' first group (2 tokens) is shorter than the sinks
        Scenario(seq_len=40, rows=[[(0, 40)]], kind="plain", params={"group_size": 4}),
    ],
    ids=["padding", "packed", "group_shorter_than_sinks"],
)
def test_other_layouts_take_the_general_path(calls, scenario):
    run_against_reference(scenario, 4, 2)
    assert not calls


@pytest.mark.parametrize("threads", [1, 2])
def test_single_key_head_runs_with_and_without_expansion(calls, threads):
    """Runs reading one key head expand it when a thread would otherwise idle (see ``_Piece``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scenario = Scenario(seq_len=37, rows=[[(0, 37)]], kind="plain", params={})
        run_against_reference(scenario, 4, 1)
    finally:
        torch.set_num_threads(previous)
    assert calls
