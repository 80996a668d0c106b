"""Linear RoPE position interpolation to a target context length (LongLoRA / SinkLoRA).

Position interpolation divides every position by ``factor`` before the rotation, so a model
pre-trained on ``L`` positions sees ``factor * L`` positions inside the range it knows. In
transformers v5 that is ``config.rope_parameters = {"rope_type": "linear", "factor": f, ...}``.
"""

from __future__ import annotations

import copy
import logging
import math
from fractions import Fraction
from typing import Any

import torch

from .attention.config import config_of

logger = logging.getLogger(__name__)

# Rope types whose frequencies are the plain RoPE ones up to a division by ``factor``.
_INTERPOLABLE = ("default", "linear")
_SLIDING = "sliding_attention"
_SCALING_KEYS = ("type", "rope_type", "factor", "short_factor", "long_factor", "attention_factor",
                 "original_max_position_embeddings")


def _text_config(model_or_config: Any) -> Any:
    config = config_of(model_or_config)
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _entries(config: Any) -> dict[str | None, dict[str, Any] | None]:
    """The rope dicts to scale: ``{None: flat}`` or ``{layer_type: dict}`` for per-layer-type configs."""
    rope = getattr(config, "rope_parameters", None)
    if not rope:
        raise ValueError(
            f"extend_context: model_type {config.model_type!r} has no rotary position embeddings "
            "(config.rope_parameters is empty); linear RoPE interpolation needs a RoPE model "
            "(e.g. Llama, Mistral, Qwen2/3, Gemma, Phi3, GPT-NeoX)"
        )
    nested = config.nested_rope_parameter_keys(rope) if hasattr(config, "nested_rope_parameter_keys") else []
    if not nested:
        return {None: rope}
    return {key: rope[key] for key in nested}


def _linear_factor(entry: dict[str, Any]) -> float | None:
    """The factor of an entry that is plain RoPE divided by a factor (``None`` for other scalings).

    Uniform ``longrope`` (all short and long factors equal, ``attention_factor`` 1) is linear
    interpolation written the way families that refuse ``"linear"`` (Phi3) accept it.
    """
    rope_type = entry.get("rope_type", entry.get("type", "default"))
    if rope_type == "default":
        return 1.0
    if rope_type == "linear":
        return float(entry.get("factor", 1.0))
    if rope_type == "longrope":
        factors = set(entry.get("short_factor") or []) | set(entry.get("long_factor") or [])
        if len(factors) == 1 and entry.get("attention_factor") == 1.0:
            return float(factors.pop())
    return None


def _as_linear(entry: dict[str, Any], factor: int) -> dict[str, Any]:
    """``entry`` as plain linear interpolation by ``factor`` (the final factor, not a multiplier)."""
    kept = {k: v for k, v in entry.items() if k not in _SCALING_KEYS}
    return {**kept, "rope_type": "linear", "factor": float(factor)}


def _as_longrope(entry: dict[str, Any], config: Any, original_length: int) -> dict[str, Any]:
    """Linear interpolation by ``factor`` in ``longrope`` form: equal short/long factors, no attention scaling."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    half = int(head_dim * entry.get("partial_rotary_factor", 1.0)) // 2
    factor = entry["factor"]
    return {
        **{k: v for k, v in entry.items() if k not in _SCALING_KEYS},
        "rope_type": "longrope",
        "factor": factor,
        "short_factor": [factor] * half,
        "long_factor": [factor] * half,
        "attention_factor": 1.0,
        "original_max_position_embeddings": getattr(config, "original_max_position_embeddings", None) or original_length,
    }


def _accepts(config: Any, rope: Any) -> bool:
    """Whether the config class's own validation accepts ``rope`` (Phi3 refuses ``"linear"``)."""
    previous = config.rope_parameters
    config.rope_parameters = rope
    try:
        config.validate_rope()
        return True
    except ValueError:
        return False
    finally:
        config.rope_parameters = previous


def rope_factor(model_or_config: Any) -> float | dict[str, float]:
    """The linear RoPE factor in force: ``1.0`` for plain RoPE, a dict per layer type for nested configs.

    Raises:
        ValueError: the model has no RoPE, or a scaling that is not linear interpolation.
    """
    config = _text_config(model_or_config)
    factors = {}
    for key, entry in _entries(config).items():
        if entry is not None:
            factor = _linear_factor(entry)
            if factor is None:
                raise ValueError(f"rope_factor: rope_type {entry.get('rope_type')!r} is not linear interpolation")
            factors[key] = factor
    return factors[None] if list(factors) == [None] else factors


def _pretraining_length(config: Any, entry: dict[str, Any], current: float, original_length: int | None) -> Fraction:
    """The unscaled length the model was pre-trained on, for one rope dict.

    ``original_length`` when given; else ``original_max_position_embeddings`` (of the rope dict,
    then of the config: Phi3, Llama 3.1 ...); else ``max_position_embeddings / current``, since a
    linear factor ``f`` covers ``f`` times the pre-training length.
    """
    if original_length is not None:
        return Fraction(original_length)
    recorded = entry.get("original_max_position_embeddings")
    recorded = recorded or getattr(config, "original_max_position_embeddings", None)
    if recorded:
        return Fraction(int(recorded))
    return Fraction(config.max_position_embeddings) / Fraction(current)


def needed_factor(target_length: int, pretraining_length: int | Fraction) -> int:
    """The smallest whole number ``f >= 1`` with ``f * pretraining_length >= target_length``."""
    return max(1, math.ceil(Fraction(target_length) / Fraction(pretraining_length)))


def _new_factors(config: Any, entries: dict, target_length: int, original_length: int | None) -> dict[str | None, int]:
    """``{layer type: final factor}`` for the rope dicts whose factor must grow (empty: nothing to do).

    Raises:
        ValueError: a dict must grow but its rope type is not linear interpolation.
    """
    factors = {}
    for key, entry in entries.items():
        if entry is None or key == _SLIDING:
            continue
        current = _linear_factor(entry)
        where = "" if key is None else f" (layer type {key!r})"
        if current is None:
            if target_length <= (original_length or config.max_position_embeddings):
                continue  # already covered: left alone, whatever the type
            rope_type = entry.get("rope_type", entry.get("type"))
            raise ValueError(
                f"extend_context: rope_type {rope_type!r}{where} cannot be combined with linear position "
                f"interpolation (allowed: {list(_INTERPOLABLE)}). The model already scales RoPE its own way; "
                "use a target_length <= max_position_embeddings, or a checkpoint with plain RoPE"
            )
        factor = needed_factor(target_length, _pretraining_length(config, entry, current, original_length))
        if factor > current:
            factors[key] = factor
    return factors


def extend_context(model_or_config: Any, target_length: int, original_length: int | None = None) -> Any:
    """Linear RoPE position interpolation so the model handles ``target_length`` tokens.

    One rule: the final factor is the smallest whole number ``f`` with
    ``f * pretraining_length >= target_length``, where ``pretraining_length`` is the *unscaled*
    length the model was pre-trained on. It is ``original_length`` when given, else the
    config's ``original_max_position_embeddings`` when it records one (Phi3, ...), else
    ``max_position_embeddings / f_now`` (a model already scaled linearly by ``f_now`` covers
    ``f_now`` times its pre-training length). When the factor changes, the pre-training length
    is recorded as ``config.original_max_position_embeddings`` (unless the config has one), so
    a later call starts from it again. Factors are never compounded: a x2 model with
    ``original_length=64`` extended to 500 gets x8 (``8 * 64 >= 500``), not x16; a x3 model at 192
    positions extended to 200 gets x4, not x6.

    The config's rope dict becomes ``rope_type="linear"`` with that factor (``rope_theta``,
    ``partial_rotary_factor`` and other keys kept) and ``max_position_embeddings`` becomes
    ``max(target_length, max_position_embeddings)``. On a model, the rotary embedding modules
    are rebuilt so the new frequencies take effect at once; weights are untouched.

    Choices:
        * A final factor not above the one in force changes no rope dict: the model already
          covers the target. Calling twice is therefore a no-op.
        * Other types (``dynamic``, ``yarn``, ``llama3``, non-uniform ``longrope`` ...) are left
          alone when the target is within ``max_position_embeddings`` (and no ``original_length``
          is given), and refused otherwise: their frequencies are not plain RoPE divided by a
          factor, and transformers has no composed type.
        * Families whose config refuses ``"linear"`` (Phi3) get the same interpolation written as
          ``longrope`` with every short/long factor equal to the factor and ``attention_factor=1``
          (exactly linear); such a dict counts as linear with that factor for the rule above.
        * Per-layer-type configs (Gemma3-like ``{"full_attention": {...}, "sliding_attention":
          {...}}``): every type follows the rule except ``"sliding_attention"``, whose layers only
          see distances within their window, which RoPE (relative) already knows.

    Args:
        model_or_config: a ``PreTrainedModel`` or its ``PreTrainedConfig`` (changed in place).
        target_length: context length to reach, an int >= 1.
        original_length: the unscaled pre-training length, when the config does not state it
            (e.g. ``max_position_embeddings`` overstates it); an int >= 1.

    Returns:
        The same ``model_or_config``.

    Raises:
        ValueError: no RoPE, a rope type that cannot be combined, or a bad length.
    """
    if isinstance(target_length, bool) or not isinstance(target_length, int) or target_length < 1:
        raise ValueError(f"target_length must be an int >= 1, got {target_length!r}")
    if original_length is not None and (
        isinstance(original_length, bool) or not isinstance(original_length, int) or original_length < 1
    ):
        raise ValueError(
            "original_length must be an int >= 1 (the unscaled pre-training length; default: from the config), "
            f"got {original_length!r}"
        )
    config = _text_config(model_or_config)
    entries = _entries(config)
    factors = _new_factors(config, entries, target_length, original_length)
    if factors:
        rope = copy.deepcopy(config.rope_parameters)
        for key, factor in factors.items():
            scaled = _as_linear(entries[key], factor)
            if key is None:
                rope = scaled
            else:
                rope[key] = scaled
        config.rope_parameters = _accepted_form(config, rope, original_length)
        _record_pretraining_length(config, entries, original_length)
        factor = max(factors.values())
        logger.info("extend_context: linear RoPE interpolation x%d for %d positions", factor, target_length)
    else:
        logger.info("extend_context: the RoPE scaling in force already covers %d positions; unchanged", target_length)
    config.max_position_embeddings = max(target_length, config.max_position_embeddings or 0)
    if hasattr(model_or_config, "named_modules"):
        _rebuild_rotary_embeddings(model_or_config, config)
    return model_or_config


def _record_pretraining_length(config: Any, entries: dict, original_length: int | None) -> None:
    """Saves the unscaled length as ``config.original_max_position_embeddings`` (unless recorded):
    ``max_position_embeddings`` becomes the target, which no longer tells it, and a later
    extension must start from it again rather than compound."""
    if original_length is None and getattr(config, "original_max_position_embeddings", None):
        return
    entry = next((e for k, e in entries.items() if e is not None and k != _SLIDING), {})
    length = _pretraining_length(config, entry, _linear_factor(entry) or 1.0, original_length)
    config.original_max_position_embeddings = math.floor(length)


def _accepted_form(config: Any, rope: Any, original_length: int | None) -> Any:
    """``rope`` as the config class accepts it: as is, or (Phi3) a flat linear dict in longrope form."""
    if _accepts(config, rope):
        return rope
    if not isinstance(rope, dict) or rope.get("rope_type") != "linear":
        raise ValueError(f"extend_context: {type(config).__name__} refuses rope_parameters {rope}")
    longrope = _as_longrope(rope, config, original_length or config.max_position_embeddings)
    if not _accepts(config, longrope):
        raise ValueError(f"extend_context: {type(config).__name__} accepts neither linear nor longrope scaling")
    return longrope


def _rebuild_rotary_embeddings(model: torch.nn.Module, config: Any) -> None:
    """Re-creates each ``*RotaryEmbedding`` module from the updated config (frequencies are set at init)."""
    for name, module in list(model.named_modules()):
        if not type(module).__name__.endswith("RotaryEmbedding") or not hasattr(module, "config"):
            continue
        if module.config is not config:
            module.config.rope_parameters = copy.deepcopy(config.rope_parameters)
            module.config.max_position_embeddings = config.max_position_embeddings
        buffers = list(module.buffers())
        fresh = type(module)(module.config)
        if buffers:
            fresh.to(buffers[0].device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)
