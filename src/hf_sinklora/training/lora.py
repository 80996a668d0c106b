"""LongLoRA's "LoRA+": LoRA on the attention projections, embeddings and norms fully trainable.

Module names differ per family (``q_proj``/``k_proj``/``v_proj``/``o_proj``, Phi3's
``qkv_proj``, GPT-NeoX's ``query_key_value``/``dense``, ``embed_tokens`` vs ``embed_in``,
RMSNorm vs LayerNorm ...), so they are found by inspecting the model, not listed by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from peft import LoraConfig

_NO_NAMES = "no {what} found in {model}; pass {param}= explicitly"


@dataclass(frozen=True)
class TrainableModules:
    """What the recipe trains, as full module names of the base model.

    Attributes:
        attention_projections: ``nn.Linear`` children of the attention modules (get LoRA).
        embeddings: the input embedding module (trained in full).
        norms: every normalization module with parameters (trained in full).
    """

    attention_projections: tuple[str, ...]
    embeddings: tuple[str, ...]
    norms: tuple[str, ...]


def _base_model(model: Any) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        get_base = getattr(model, "get_base_model", None)  # a PeftModel: inspect what it wraps
        return get_base() if callable(get_base) else model
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..hub.gguf import load_pretrained

    config = load_pretrained(AutoConfig, model) if isinstance(model, str) else model
    if not hasattr(config, "to_dict"):
        raise TypeError(f"model must be a torch module, a config or a model id/path, got {type(model).__name__}")
    with init_empty_weights():  # names only: no memory, no weights read
        return AutoModelForCausalLM.from_config(config)


def _is_attention(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("Attention") and any(
        isinstance(child, torch.nn.Linear) for child in module.children()
    )


def _is_norm(module: torch.nn.Module) -> bool:
    has_params = any(True for _ in module.parameters(recurse=False))
    return has_params and (
        isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm))
        or "norm" in type(module).__name__.lower()
    )


def find_trainable_modules(model: Any) -> TrainableModules:
    """Inspects ``model`` (a model, config or model id/path) for the recipe's modules.

    Attention modules are those whose class name ends in ``Attention`` and that hold
    ``nn.Linear`` children; norms are modules with their own parameters whose class is a
    torch norm or has ``Norm`` in its name; the embedding is ``get_input_embeddings()``.
    """
    base = _base_model(model)
    projections, norms = [], []
    for name, module in base.named_modules():
        if _is_attention(module):
            projections.extend(f"{name}.{child}" for child, sub in module.named_children()
                               if isinstance(sub, torch.nn.Linear))
        elif _is_norm(module):
            norms.append(name)
    get_embeddings = getattr(base, "get_input_embeddings", None)
    embedding = get_embeddings() if callable(get_embeddings) else None
    embeddings = [name for name, module in base.named_modules() if embedding is not None and module is embedding]
    return TrainableModules(tuple(projections), tuple(embeddings[:1]), tuple(norms))


def _shortest_names(all_names: Sequence[str], wanted: Iterable[str], matches) -> list[str]:
    """Leaf names when they select exactly ``wanted`` under peft's matching rule, else the full names."""
    wanted = list(wanted)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in wanted})
    selected = {name for name in all_names if any(matches(name, leaf) for leaf in leaves)}
    return leaves if selected == set(wanted) else wanted


def _target_match(name: str, target: str) -> bool:  # peft's rule for a list of target_modules
    return name == target or name.endswith("." + target)


def _save_match(name: str, target: str) -> bool:  # peft's rule for modules_to_save
    return name.endswith(target)


def sinklora_lora_config(
    model: Any,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    modules_to_save: Sequence[str] | None = None,
    train_embeddings: bool = True,
    train_norms: bool = True,
    **lora_kwargs: Any,
) -> LoraConfig:
    """A ``peft.LoraConfig`` for the SinkLoRA recipe on ``model``'s family.

    LoRA goes on every ``nn.Linear`` of the attention modules; the input embeddings and
    every norm are trained in full through ``modules_to_save`` (LongLoRA's "LoRA+"). For a
    model with tied input/output embeddings ``ensure_weight_tying=True`` is set, so the
    trained embedding stays tied to the LM head.

    Args:
        model: the base ``PreTrainedModel`` (or its config, or a model id/path: then an
            empty-weights copy is built to read the names).
        r: LoRA rank, an int >= 1.
        alpha: LoRA scaling numerator (``lora_alpha``), > 0.
        dropout: LoRA dropout, in [0, 1).
        target_modules: override the attention projections found.
        modules_to_save: override the embedding + norm modules found.
        train_embeddings: include the input embeddings in ``modules_to_save``.
        train_norms: include every norm in ``modules_to_save``.
        **lora_kwargs: passed on to ``LoraConfig`` (e.g. ``use_rslora``).

    Returns:
        ``task_type="CAUSAL_LM"``, the targets and ``modules_to_save`` found.

    Raises:
        ValueError: a bad hyper-parameter, or no attention projections found.
    """
    from peft import LoraConfig

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")

    base = _base_model(model)
    found = find_trainable_modules(base)
    all_names = [name for name, _ in base.named_modules()]
    if target_modules is None:
        if not found.attention_projections:
            raise ValueError(_NO_NAMES.format(what="attention projections", model=type(base).__name__,
                                              param="target_modules"))
        target_modules = _shortest_names(all_names, found.attention_projections, _target_match)
    if modules_to_save is None:
        wanted = (found.embeddings if train_embeddings else ()) + (found.norms if train_norms else ())
        modules_to_save = _shortest_names(all_names, wanted, _save_match) if wanted else None
    config = getattr(base, "config", None)
    tied = bool(getattr(base, "all_tied_weights_keys", None)) and config is not None and getattr(
        config.get_text_config(), "tie_word_embeddings", False
    )
    embedding_saved = bool(modules_to_save) and any(
        _save_match(name, target) for name in found.embeddings for target in modules_to_save
    )
    if tied and embedding_saved:
        lora_kwargs.setdefault("ensure_weight_tying", True)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        bias="none",
        task_type="CAUSAL_LM",
        **lora_kwargs,
    )
