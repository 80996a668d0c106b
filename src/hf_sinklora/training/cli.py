"""``hf-sinklora train``: the recipe from the command line (flags or a YAML/JSON config file).

Flags are generated from :class:`~hf_sinklora.training.recipe.TrainSettings`; a config file
holds the same keys, and flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any

from .recipe import TrainSettings

logger = logging.getLogger(__name__)

_FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
_REQUIRED = ("model", "dataset", "target_length", "output_dir")


def _value_type(field: dataclasses.Field) -> type:
    hints = typing.get_type_hints(TrainSettings)
    hint = hints[field.name]
    if isinstance(hint, types.UnionType):  # "int | None" -> int
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``train`` sub-command; its handler is ``args.handler``."""
    parser = subparsers.add_parser(
        "train",
        help="extend a model's context with the SinkLoRA recipe (LoRA+, RoPE interpolation, SF-Attn, SFTTrainer)",
        description="Fine-tune with SF-Attn, linear RoPE interpolation and LoRA+ through TRL's SFTTrainer. "
                    "Flags override the keys of --config.",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML or JSON file with any of the settings below (keys as the flag names)")
    for name, field in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        help_text = field.metadata["help"]
        if name not in _REQUIRED and "default:" not in help_text:
            help_text += f" (default: {default})"
        value_type = _value_type(field)
        if value_type is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=name, action=action, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=value_type, default=None, help=help_text)
    parser.set_defaults(handler=run_train_command)
    return parser


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a ``.yaml``/``.yml``/``.json`` file (a mapping)."""
    if not path.is_file():
        raise ValueError(f"--config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    elif path.suffix.lower() == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"--config must be a .yaml, .yml or .json file, got {path.name}")
    if not isinstance(values, dict):
        raise ValueError(f"--config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return values


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """Config file values, overridden by the flags given on the command line."""
    values = read_config_file(args.config) if args.config else {}
    settings = TrainSettings.from_dict(values)
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}
    settings = dataclasses.replace(settings, **given)
    settings.validate()
    return settings


def format_summary(summary: dict[str, Any]) -> str:
    rows = [(key.replace("_", " "), value) for key, value in summary.items() if value is not None]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def run_train_command(args: argparse.Namespace) -> int:
    from .recipe import run_training

    summary = run_training(settings_from_args(args))
    if summary.pop("main_process"):  # under accelerate launch, one summary
        print(format_summary(summary))
    return 0
