"""Settings: validation with errors that name the parameter, storage on the config, registration."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig
from transformers.masking_utils import AttentionMaskInterface

import hf_sinklora
from hf_sinklora import SFAttentionConfig, configure_sf_attention
from hf_sinklora.attention import sf_attention_mask


@pytest.mark.parametrize(
    "params,name",
    [
        ({"group_size_ratio": 0}, "group_size_ratio"),
        ({"group_size_ratio": 1.5}, "group_size_ratio"),
        ({"group_size_ratio": "a"}, "group_size_ratio"),
        ({"group_size_ratio": True}, "group_size_ratio"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 2.5}, "group_size"),
        ({"num_sink_tokens": -1}, "num_sink_tokens"),
        ({"num_sink_tokens": 1.0}, "num_sink_tokens"),
        ({"shifted_head_ratio": -0.1}, "shifted_head_ratio"),
        ({"shifted_head_ratio": 2}, "shifted_head_ratio"),
        ({"eval_mode": "sparse"}, "eval_mode"),
        ({"backend": "triton"}, "backend"),
        ({"sinks": 4}, "sinks"),
    ],
)
def test_bad_values_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        configure_sf_attention(LlamaConfig(), **params)


def test_group_size_and_shifted_head_formulas():
    settings = SFAttentionConfig(group_size_ratio=0.25, shifted_head_ratio=0.5)
    assert settings.group_size_for(8192) == 2048 and settings.group_size_for(37) == 10
    assert settings.group_size_for(1) == 1
    assert SFAttentionConfig(group_size_ratio=0.07).group_size_for(100) == 7  # no float round-up
    assert settings.num_shifted_heads(7) == 4 and SFAttentionConfig(shifted_head_ratio=0.25).num_shifted_heads(8) == 2


def test_configure_merges_and_stores_a_plain_dict():
    config = LlamaConfig()
    configure_sf_attention(config, num_sink_tokens=2)
    settings = configure_sf_attention(config, group_size=64)
    assert settings.num_sink_tokens == 2 and settings.group_size == 64
    assert isinstance(config.sf_attention, dict) and config.sf_attention["group_size"] == 64
    assert config.to_dict()["sf_attention"]["num_sink_tokens"] == 2


def test_configure_accepts_a_model_and_rejects_other_objects():
    from transformers import AutoModelForCausalLM

    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
    model = AutoModelForCausalLM.from_config(config)
    configure_sf_attention(model, eval_mode="sf")
    assert model.config.sf_attention["eval_mode"] == "sf"
    with pytest.raises(TypeError, match="model_or_config"):
        configure_sf_attention(object())


def test_both_names_are_registered_with_a_mask_entry():
    assert hf_sinklora.__version__
    for name in ("sf_attention", "s2_attention"):
        assert name in AttentionInterface._global_mapping
        assert AttentionMaskInterface._global_mapping[name] is sf_attention_mask


def test_mask_entry_passes_only_real_padding():
    ones = torch.ones(2, 6, dtype=torch.bool)
    assert sf_attention_mask(2, 6, 6, attention_mask=ones) is None
    assert sf_attention_mask(2, 6, 6, attention_mask=None) is None
    padded = ones.clone()
    padded[1, :3] = False
    assert torch.equal(sf_attention_mask(2, 4, 4, attention_mask=padded), padded[:, -4:])


def test_mask_entry_names_overlays_beyond_causal_window_padding_and_packing():
    from transformers.masking_utils import (
        and_masks,
        causal_mask_function,
        chunked_causal_mask_function,
        or_masks,
        packed_sequence_mask_function,
        remap_positions_for_packed_sequence,
        sliding_window_causal_mask_function,
    )

    from hf_sinklora.attention.mask import mask_overlays

    packed = torch.tensor([[0, 0, 1, 1]])
    assert mask_overlays(causal_mask_function) == []
    assert mask_overlays(sliding_window_causal_mask_function(8)) == []
    packed_causal = remap_positions_for_packed_sequence(causal_mask_function, torch.tensor([[0, 1, 0, 1]]))
    assert mask_overlays(and_masks(packed_causal, packed_sequence_mask_function(packed))) == []
    assert mask_overlays(chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))) == ["chunked_overlay"]

    def image_blocks(b, h, q, kv):
        return q < 2

    assert mask_overlays(or_masks(causal_mask_function, image_blocks)) == [
        "or_masks(causal_mask_function, test_mask_entry_names_overlays_beyond_causal_window_padding_and_packing)"
    ]


@pytest.mark.parametrize("geometry", [
    dict(q_length=1, kv_length=9, q_offset=8, kv_offset=0),     # DynamicCache decoding
    dict(q_length=3, kv_length=16, q_offset=6, kv_offset=0),    # StaticCache (max_cache_len 16)
    dict(q_length=1, kv_length=4, q_offset=8, kv_offset=5, window=4),  # sliding-window cache layer, full
    dict(q_length=9, kv_length=9, q_offset=0, kv_offset=0, chunk=4),   # whole sequence with a chunked overlay
])
def test_mask_entry_is_sdpas_mask_beyond_whole_plain_sequences(geometry):
    """Under a cache or an overlay the entry returns exactly transformers' sdpa mask (the
    independent side here), with the 2-D padding mask and the overlay names attached."""
    from transformers.masking_utils import (
        causal_mask_function,
        chunked_causal_mask_function,
        sdpa_mask,
        sliding_window_causal_mask_function,
    )

    from hf_sinklora.attention.mask import overlays_of, padding_of

    geometry = dict(geometry)
    window, chunk = geometry.pop("window", None), geometry.pop("chunk", None)
    mask_function = causal_mask_function
    if window:
        mask_function = sliding_window_causal_mask_function(window)
    if chunk:
        mask_function = chunked_causal_mask_function(chunk, torch.tensor([3, 0]))
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[0, :3] = False  # left padding
    kwargs = dict(batch_size=2, mask_function=mask_function, attention_mask=padding, allow_is_causal_skip=True,
                  local_size=window, **geometry)
    got = sf_attention_mask(**kwargs)
    want = sdpa_mask(**kwargs)
    assert got.shape == (2, 1, geometry["q_length"], geometry["kv_length"])
    assert torch.equal(got, want)
    assert padding_of(got) is padding
    assert overlays_of(got) == (["chunked_overlay"] if chunk else [])


def test_older_transformers_is_refused_with_the_floor():
    from hf_sinklora.attention.interface import MIN_TRANSFORMERS, check_transformers_version

    check_transformers_version(MIN_TRANSFORMERS)
    check_transformers_version("5.30.1")
    for old in ("5.2.0", "5.3.0", "5.23.0"):
        with pytest.raises(ImportError, match=r"transformers>=5\.24,<6 \(found " + old.replace(".", r"\.")):
            check_transformers_version(old)


def test_ci_floor_job_installs_exactly_the_declared_lower_bounds():
    """.ci/floor pins every lower bound of pyproject.toml (torch aside: the CPU wheel of every job)."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    declared = {}
    for requirement in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,<[0-9.]+)?", requirement)
        declared[match[1].lower().replace("_", "-")] = match[2]
    pinned = {name.lower().replace("_", "-"): version
              for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([0-9.]+)"', (root / ".ci/floor").read_text())}
    assert declared["transformers"] == "5.24"
    for name, version in pinned.items():  # "5.24.0" pins ">=5.24"
        parts = declared[name].split(".")
        assert version.split(".")[: len(parts)] == parts, f"{name}: floor job {version}, pyproject >= {declared[name]}"
        assert set(version.split(".")[len(parts):]) <= {"0"}, f"{name}: floor job {version} above >= {declared[name]}"
    assert set(declared) - set(pinned) == {"torch", "pyyaml", "tqdm", "matplotlib"}
