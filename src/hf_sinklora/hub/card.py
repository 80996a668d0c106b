"""The model card of a SinkLoRA output, built with ``huggingface_hub.ModelCard``.

What the card says comes from a *recipe record*: a plain dict (base model, adapter
settings, RoPE scaling, SF-Attn settings, data, training, evaluation, versions) written next
to the weights as ``sinklora_recipe.json``, so the card can be rendered again later, e.g.
with the repo id it is pushed to or with new evaluation results.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .files import write_text_atomic

CARD_FILE = "README.md"
RECIPE_FILE = "sinklora_recipe.json"
TAGS = ("sinklora", "sf-attention", "long-context", "lora", "peft", "text-generation")
FRAMEWORKS = ("hf-sinklora", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "huggingface_hub")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_EVAL_FIELDS = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` when it can be a Hub repo id (not a local path), else None: metadata must hold ids."""
    if not name or not _HUB_ID.match(name) or Path(name).exists():
        return None
    return name


def framework_versions() -> dict[str, str]:
    versions = {}
    for package in FRAMEWORKS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _numel(parameter: Any) -> int:
    return getattr(parameter, "ds_numel", None) or parameter.numel()  # DeepSpeed ZeRO-3 partitions


# parameters of the adapter, not of the base model: LoRA factors and peft's trained copies
_ADAPTER_PARTS = (".lora_", ".modules_to_save.")


def _eval_result_dict(result: EvalResult | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(result, EvalResult):
        result = {k: v for k, v in vars(result).items() if v is not None}
    missing = [key for key in _EVAL_FIELDS if key not in result]
    if missing:
        raise ValueError(f"eval_results entries need {list(_EVAL_FIELDS)}; missing {missing} in {dict(result)}")
    return dict(result)


def recipe_record(
    model: Any,
    *,
    datasets: Iterable[str] = (),
    training: Mapping[str, Any] | None = None,
    eval_results: Iterable[EvalResult | Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What a card needs to know about a trained ``model`` (a ``PeftModel`` or ``PreTrainedModel``).

    Args:
        model: the trained model (wrapped in DDP/FSDP is fine if unwrapped first).
        datasets: names of the training data (hub ids go into the metadata, files into the text).
        training: free-form training facts (steps, epochs, learning rate, packing, loss ...).
        eval_results: ``huggingface_hub.EvalResult`` objects or dicts with the same fields.
    """
    from ..attention.config import sf_config_from
    from ..rope import rope_factor

    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = base.config.get_text_config()
    adapter = None
    if peft_config:
        cfg = peft_config[getattr(model, "active_adapter", "default")]
        targets = cfg.target_modules
        adapter = {
            "peft_type": str(getattr(cfg.peft_type, "value", cfg.peft_type)),
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": sorted(targets) if not isinstance(targets, str) else targets,
            "modules_to_save": sorted(set(cfg.modules_to_save or [])),
        }
        base_model = cfg.base_model_name_or_path
    else:
        base_model = getattr(base.config, "_name_or_path", None)
    try:
        factor = rope_factor(config)
    except ValueError:
        factor = None
    return {
        "base_model": base_model or None,
        "model_type": config.model_type,
        "adapter": adapter,
        "trainable_parameters": sum(_numel(p) for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(_numel(p) for name, p in model.named_parameters()
                                if not any(part in name for part in _ADAPTER_PARTS)),
        "rope": {
            "rope_parameters": getattr(config, "rope_parameters", None),
            "factor": factor,
            "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        },
        "attn_implementation": getattr(config, "_attn_implementation", None) or "sf_attention",
        "sf_attention": sf_config_from(config).to_dict(),
        "datasets": [str(name) for name in datasets],
        "training": dict(training or {}),
        "eval_results": [_eval_result_dict(r) for r in eval_results],
        "framework_versions": framework_versions(),
    }


def _table(rows: Iterable[tuple[Any, Any]], header: tuple[str, str] = ("setting", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _code_list(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(f"`{n}`" for n in names) if names else "none"


TRAINING_ATTENTION = {
    "sf_attention": "Sink Fixed Attention (SF-Attn)",
    "s2_attention": "shifted sparse attention without sinks (S2-Attn, an ablation)",
}


def _training_attention(record: Mapping[str, Any]) -> str:
    name = record.get("attn_implementation") or "sf_attention"
    return TRAINING_ATTENTION.get(name, f"full causal attention (`{name}`)")


def rope_description(rope: Mapping[str, Any]) -> str:
    """What the RoPE scaling in ``rope["rope_parameters"]`` does, in words."""
    parameters = rope.get("rope_parameters") or {}
    entries = {None: parameters} if "rope_type" in parameters or "type" in parameters or not parameters else parameters
    described = []
    for layer_type, entry in entries.items():
        entry = entry or {}
        kind = entry.get("rope_type", entry.get("type", "default"))
        if kind == "linear":
            text = f"linear position interpolation, factor {entry.get('factor')}"
        elif kind == "longrope" and len(set(entry.get("short_factor") or []) | set(entry.get("long_factor") or [])) == 1:
            text = f"linear position interpolation (as uniform longrope), factor {entry.get('factor')}"
        elif kind == "default":
            text = "none (plain RoPE)"
        else:
            text = f"{kind} (not from this recipe)"
        described.append(text if layer_type is None else f"{layer_type}: {text}")
    return "; ".join(described)


def _loading_section(record: dict[str, Any], load_path: str) -> str:
    adapter = record["adapter"] is not None
    plain = (
        f"model = AutoModelForCausalLM.from_pretrained(\"{load_path}\")  # base + adapter, RoPE scaling, sf_attention\n"
        f"generator = pipeline(\"text-generation\", model=\"{load_path}\")"
        if adapter else
        f"model = AutoModelForCausalLM.from_pretrained(\"{load_path}\", attn_implementation=\"sf_attention\")\n"
        f"generator = pipeline(\"text-generation\", model=model, tokenizer=\"{load_path}\")"
    )
    return f"""## How to load

```python
import hf_sinklora  # registers attn_implementation="sf_attention"
from hf_sinklora import H2OCache
from transformers import AutoTokenizer

model = hf_sinklora.load_model("{load_path}")  # base + adapter, RoPE scaling, sf_attention, eval mode
tokenizer = AutoTokenizer.from_pretrained("{load_path}")
inputs = tokenizer(long_prompt, return_tensors="pt")
# H2O KV-cache eviction keeps at most `budget` tokens per layer while generating
out = model.generate(**inputs, cache=H2OCache(budget=2048), max_new_tokens=256)
```

`load_model` reads the base model from `adapter_config.json`, the RoPE scaling and SF-Attn settings
from `config.json`, and loads with `attn_implementation="sf_attention"` (SF-Attn while training,
ordinary causal attention in eval mode). `hf_sinklora.merge_adapter("{load_path}", "merged")` writes a
plain model with the LoRA merged in. transformers' own loaders work too, once `hf_sinklora` is
imported (it registers this directory's `config.json` type, which carries the RoPE scaling):

```python
import hf_sinklora
from transformers import AutoModelForCausalLM, pipeline

{plain}
```
"""


def _trained_length_note(training: Mapping[str, Any], target: Any) -> str:
    """`` (trained on sequences of at most N tokens)`` when the training was shorter than the target."""
    longest = training.get("longest_trained_sequence")
    if not isinstance(longest, int) or not isinstance(target, int) or longest >= target:
        return ""
    return f" (trained on sequences of at most **{longest} tokens**)"


def render_model_card(
    record: Mapping[str, Any],
    load_path: str | None = None,
    model_name: str | None = None,
    tags: Iterable[str] = (),
) -> ModelCard:
    """The card for a recipe ``record`` (see :func:`recipe_record`).

    Args:
        record: the recipe record.
        load_path: the repo id or directory the snippets load from.
        model_name: name in the title and model-index (default: last part of ``load_path``).
        tags: extra metadata tags, after the SinkLoRA ones.
    """
    record = dict(record)
    load_path = load_path or "path/to/this/directory"
    model_name = model_name or load_path.rstrip("/").rsplit("/", 1)[-1]
    adapter = record.get("adapter")
    rope = record.get("rope") or {}
    base_model = record.get("base_model")
    hub_datasets = [d for d in record.get("datasets", []) if hub_id_or_none(d)]
    eval_results = [EvalResult(**r) for r in record.get("eval_results", [])]
    indexed = [r for r in eval_results if hub_id_or_none(r.dataset_type)]  # the model-index names hub datasets
    own_tags = list(TAGS) if adapter else [t for t in TAGS if t not in ("lora", "peft")]
    data = ModelCardData(
        base_model=hub_id_or_none(base_model),
        library_name="peft" if adapter else "transformers",
        tags=own_tags + [t for t in dict.fromkeys(tags) if t not in own_tags],
        datasets=hub_datasets or None,
        pipeline_tag="text-generation",
        model_name=model_name if indexed else None,
        eval_results=indexed or None,
    )
    what = "a LoRA adapter (SinkLoRA recipe)" if adapter else "a model fine-tuned with the SinkLoRA recipe"
    parts = [
        f"# {model_name}",
        f"This is {what} for `{base_model or 'an unnamed base model'}` ({record.get('model_type')}), trained with "
        f"[hf-sinklora](https://arxiv.org/abs/2406.05678): {_training_attention(record)} during training, RoPE "
        f"scaling to **{rope.get('max_position_embeddings')} tokens** ({rope_description(rope)})"
        + _trained_length_note(record.get("training") or {}, rope.get("max_position_embeddings"))
        + ", and LoRA on the attention projections with the embeddings and norms trained in full (LongLoRA's "
        "\"LoRA+\").",
        _loading_section(record, load_path),
        "## SF-Attn settings (`config.sf_attention`)\n\n" + _table(record.get("sf_attention", {}).items())
        + "\n\nSF-Attn is the training-time attention; with `eval_mode=\"full\"` inference uses ordinary causal "
        "attention.",
        "## RoPE scaling\n\n" + _table([
            ("scaling", rope_description(rope)),
            ("factor", rope.get("factor")),
            ("target length (`max_position_embeddings`)", rope.get("max_position_embeddings")),
            ("`rope_parameters`", f"`{json.dumps(rope.get('rope_parameters'))}`"),
        ]),
    ]
    if adapter:
        parts.append("## LoRA\n\n" + _table([
            ("r", adapter["r"]),
            ("alpha", adapter["lora_alpha"]),
            ("dropout", adapter["lora_dropout"]),
            ("LoRA target modules", _code_list(adapter["target_modules"]) if not isinstance(
                adapter["target_modules"], str) else f"`{adapter['target_modules']}`"),
            ("trained in full (`modules_to_save`)", _code_list(adapter["modules_to_save"])),
            ("trainable parameters", f"{record.get('trainable_parameters'):,} "
                                     f"(base model: {record.get('total_parameters'):,})"),
        ]))
    training = record.get("training") or {}
    data_names = record.get("datasets") or []
    parts.append("## Training data and procedure\n\n"
                 + f"Data: {_code_list(data_names) if data_names else 'not recorded'}.\n\n"
                 + (_table(training.items()) if training else "No training facts recorded."))
    parts.insert(2, "## Training attention\n\n" + _table([
        ("`attn_implementation` while training", f"`{record.get('attn_implementation') or 'sf_attention'}`"),
        ("what it is", _training_attention(record)),
    ]))
    if eval_results:
        rows = [(f"{r.metric_type} on {r.dataset_name}" + (f" ({r.dataset_split})" if r.dataset_split else ""),
                 r.metric_value) for r in eval_results]
        parts.append("## Evaluation\n\n" + _table(rows, header=("metric", "value")))
    parts.append("## Framework versions\n\n" + "\n".join(
        f"- {name} {version}" for name, version in (record.get("framework_versions") or {}).items()))
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"
    return ModelCard(content)


def write_model_card(
    directory: str | Path,
    record: Mapping[str, Any] | None = None,
    load_path: str | None = None,
    model_name: str | None = None,
    tags: Iterable[str] = (),
) -> ModelCard:
    """Writes ``README.md`` (and ``sinklora_recipe.json`` when ``record`` is given) into ``directory``.

    Without ``record`` the one already in ``directory`` is rendered again (e.g. with the repo id
    as ``load_path``). Returns the card.

    Raises:
        ValueError: no record given and none in ``directory``.
    """
    directory = Path(directory)
    if record is None:
        record_file = directory / RECIPE_FILE
        if not record_file.is_file():
            raise ValueError(f"directory {directory} has no {RECIPE_FILE}; pass record=")
        record = json.loads(record_file.read_text())
    else:
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / RECIPE_FILE, json.dumps(record, indent=2, default=str) + "\n")
    card = render_model_card(record, load_path=load_path or str(directory), model_name=model_name or directory.name,
                             tags=tags)
    write_text_atomic(directory / CARD_FILE, str(card))
    return card
