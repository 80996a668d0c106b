"""Every SF-Attn code path against the dense reference of the rule: outputs and gradients."""

from __future__ import annotations

import random

import pytest
import torch

from hf_sinklora.attention import sf_attention_forward
from hf_sinklora.attention.interface import s2_attention_forward

from .helpers import FakeAttention, Scenario, random_scenario
from .reference import dense_attention, describe_tokens, sf_reference_mask

HEAD_LAYOUTS = [(4, 4), (4, 2), (6, 2), (4, 1), (3, 1), (5, 5), (8, 2)]


def run_against_reference(scenario: Scenario, num_heads: int, num_kv_heads: int, dtype=torch.float64, seed=0,
                          attention_fn=sf_attention_forward, expected_params=None, training=True, device="cpu",
                          head_dim=8):
    """The attention function on ``device`` against the dense reference (on the CPU), outputs and gradients."""
    torch.manual_seed(seed)
    batch, n, dim = len(scenario.rows), scenario.seq_len, head_dim
    q = torch.randn(batch, num_heads, n, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, num_kv_heads, n, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, num_kv_heads, n, dim, dtype=dtype, requires_grad=True)
    module = FakeAttention(scenario.params, num_heads // num_kv_heads).train(training)
    mask, kwargs = scenario.attention_kwargs()
    moved = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()}
    out, weights = attention_fn(
        module, q.to(device), k.to(device), v.to(device), None if mask is None else mask.to(device), dropout=0.0,
        scaling=0.3, sliding_window=scenario.sliding_window, softcap=scenario.softcap, **moved,
    )
    out = out.cpu()
    assert weights is None
    assert out.shape == (batch, n, num_heads, dim)

    segment_id, position = describe_tokens(n, scenario.rows)
    ref_mask = sf_reference_mask(
        segment_id, position, num_heads, sliding_window=scenario.sliding_window,
        key_valid=scenario.key_valid(), **(expected_params or scenario.params),
    )
    # Only real, unmasked tokens are compared; padding outputs are unused by the model.
    real = segment_id >= 0
    if scenario.key_valid() is not None:
        real &= scenario.key_valid()
    weight = torch.randn_like(out) * real[:, :, None, None]
    visible = real[:, :, None, None]
    got = [out * visible, *torch.autograd.grad((out * weight).sum(), (q, k, v))]
    if dtype == torch.float64:
        for got_tensor, want_tensor in zip(got, _dense_with_grads(q, k, v, ref_mask, scenario, weight, visible, dtype)):
            torch.testing.assert_close(got_tensor, want_tensor, atol=1e-9, rtol=1e-7)
        return
    # Low precision: the error against a float64 reference may be twice that of a dense reference
    # computed as a bf16/fp16 kernel would (flash-attn's own criterion), or two rounding steps of the
    # tensor's scale: the backward adds bf16 partial gradients of overlapping groups and sinks, rounding
    # the reference never does. A wrong mask is off by the scale itself.
    exact = _dense_with_grads(q, k, v, ref_mask, scenario, weight, visible, torch.float64)
    rounded = _dense_with_grads(q, k, v, ref_mask, scenario, weight, visible, dtype, upcast=False)
    eps = torch.finfo(dtype).eps
    for name, got_tensor, exact_tensor, rounded_tensor in zip(("output", "grad q", "grad k", "grad v"), got, exact, rounded):
        error = (got_tensor.double() - exact_tensor).abs().max().item()
        kernel_error = (rounded_tensor.double() - exact_tensor).abs().max().item()
        allowed = max(2 * kernel_error, 2 * eps * exact_tensor.abs().max().item()) + 1e-5
        assert error <= allowed, f"{name}: max error {error:.4g} against float64, allowed {allowed:.4g} ({dtype})"


def _dense_with_grads(q, k, v, mask, scenario, weight, visible, dtype, upcast=True) -> list[torch.Tensor]:
    """The dense reference on ``dtype`` leaves: its output on real rows, then its q/k/v gradients."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    ref = dense_attention(*leaves, mask, scale=0.3, softcap=scenario.softcap, upcast=upcast)
    return [ref * visible, *torch.autograd.grad((ref * weight.to(dtype)).sum(), leaves)]


@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_on_the_cpu_passes_the_low_precision_criterion(seed):
    scenario = random_scenario(5000 + seed)
    scenario.params["backend"] = "sdpa"
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, dtype=torch.bfloat16, seed=seed, head_dim=16)


def test_low_precision_criterion_catches_a_wrong_rule():
    scenario = Scenario(seq_len=64, rows=[[(0, 64)]], kind="plain", params={"num_sink_tokens": 4})
    with pytest.raises(AssertionError, match="against float64"):
        run_against_reference(scenario, 4, 2, dtype=torch.bfloat16, head_dim=16, expected_params={"num_sink_tokens": 0})


@pytest.mark.parametrize("seed", range(80))
def test_random_scenarios_match_dense_reference(seed):
    scenario = random_scenario(seed)
    num_heads, num_kv_heads = random.Random(seed).choice(HEAD_LAYOUTS)
    run_against_reference(scenario, num_heads, num_kv_heads, seed=seed)


@pytest.mark.parametrize(
    "n,params",
    [
        (1, {}),  # a single token
        (3, {"num_sink_tokens": 4}),  # n <= sinks
        (5, {"group_size": 16}),  # n < G
        (37, {}),  # n not divisible by G
        (64, {}),  # the common case: G = 16, mask-free path
        (64, {"group_size": 3, "num_sink_tokens": 5}),  # G < sinks: groups with some of the sinks
        (50, {"group_size": 7, "shifted_head_ratio": 1.0}),  # odd G, every head shifted
    ],
)
def test_edge_lengths(n, params):
    scenario = Scenario(seq_len=n, rows=[[(0, n)], [(0, n)]], kind="plain", params=params)
    run_against_reference(scenario, 4, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype):
    scenario = Scenario(seq_len=48, rows=[[(0, 48)], [(0, 30)]], kind="right_pad", params={})
    run_against_reference(scenario, 4, 2, dtype=dtype)


def test_s2_attention_is_the_rule_without_sinks():
    params = {"num_sink_tokens": 4, "group_size_ratio": 0.25}
    scenario = Scenario(seq_len=40, rows=[[(0, 40)]], kind="plain", params=params)
    run_against_reference(scenario, 4, 4, attention_fn=s2_attention_forward,
                          expected_params={**params, "num_sink_tokens": 0})


def test_sinks_change_the_output():
    """Guards against a rule that ignores sinks (the reference would then be too easy to match)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    with_sinks, _ = sf_attention_forward(FakeAttention({"num_sink_tokens": 4}).train(), q, k, v, None)
    without, _ = sf_attention_forward(FakeAttention({"num_sink_tokens": 0}).train(), q, k, v, None)
    assert not torch.allclose(with_sinks[:, 8:], without[:, 8:])
    # G = 8: tokens before the shifted heads' first boundary (4) hold the sinks themselves
    torch.testing.assert_close(with_sinks[:, :4], without[:, :4])


def test_no_future_token_leaks_into_any_output():
    """d out_i / d k_j == 0 for every j > i, in every head (the LongLoRA wrap-around bug)."""
    torch.manual_seed(0)
    n = 24
    q = torch.randn(1, 4, n, 8)
    k = torch.randn(1, 4, n, 8, requires_grad=True)
    v = torch.randn(1, 4, n, 8, requires_grad=True)
    module = FakeAttention({"group_size_ratio": 0.25, "shifted_head_ratio": 0.5}).train()
    out, _ = sf_attention_forward(module, q, k, v, None)
    for i in range(n):
        gk, gv = torch.autograd.grad(out[0, i].sum(), (k, v), retain_graph=True)
        assert not gk[0, :, i + 1 :].any() and not gv[0, :, i + 1 :].any()


def test_dropout_keeps_the_pattern():
    torch.manual_seed(0)
    n = 32
    q = torch.randn(1, 2, n, 8)
    k = torch.randn(1, 2, n, 8, requires_grad=True)
    v = torch.randn(1, 2, n, 8)
    module = FakeAttention({"shifted_head_ratio": 0.0, "num_sink_tokens": 2}).train()
    out, _ = sf_attention_forward(module, q, k, v, None, dropout=0.5)
    no_drop, _ = sf_attention_forward(module, q, k, v, None, dropout=0.0)
    assert not torch.allclose(out, no_drop)
    # query 20 is in group [16, 24): it may depend on sinks 0-1 and keys 16..20 only
    (grad,) = torch.autograd.grad(out[0, 20].sum(), k)
    touched = grad[0].abs().sum(dim=(0, 2)) > 0
    allowed = torch.zeros(n, dtype=torch.bool)
    allowed[[0, 1]] = True
    allowed[16:21] = True
    assert not (touched & ~allowed).any()


@pytest.mark.parametrize("kind", ["packed_pos", "packed_cu", "right_pad", "left_pad", "plain"])
def test_eval_mode_is_full_causal_attention_per_segment(kind):
    rows = {
        "packed_pos": [[(0, 9), (9, 20), (29, 3)], [(0, 32)]],
        "packed_cu": [[(0, 9), (9, 20), (29, 3)]],
        "right_pad": [[(0, 32)], [(0, 21)]],
        "left_pad": [[(0, 32)], [(11, 21)]],
        "plain": [[(0, 32)], [(0, 32)]],
    }[kind]
    params = {"group_size_ratio": 0.25, "num_sink_tokens": 4, "shifted_head_ratio": 0.5}
    scenario = Scenario(seq_len=32, rows=rows, kind=kind, params=params)
    full = {"group_size_ratio": 1.0, "num_sink_tokens": 0, "shifted_head_ratio": 0.0}
    run_against_reference(scenario, 4, 2, expected_params=full, training=False)
