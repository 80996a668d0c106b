"""``hf-sinklora train``: the recipe from the command line (flags or a YAML/JSON config file).

The flags are :class:`~hf_sinklora.training.recipe.TrainSettings`' fields, added by
transformers' ``HfArgumentParser`` (``--target-length`` and ``--target_length`` both work);
``--config FILE`` is read by TRL's ``TrlParser`` (see :func:`hf_sinklora.cli.main`): its keys
are the field names, and flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from .recipe import TrainSettings

logger = logging.getLogger(__name__)


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``train`` sub-command (an ``HfArgumentParser`` of ``TrainSettings``); its handler is ``args.handler``."""
    parser = subparsers.add_parser(
        "train",
        dataclass_types=[TrainSettings],
        help="extend a model's context with the SinkLoRA recipe (LoRA+, RoPE interpolation, SF-Attn, SFTTrainer)",
        description="Fine-tune with SF-Attn, linear RoPE interpolation and LoRA+ through TRL's SFTTrainer. "
                    "Flags override the keys of --config.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="YAML or JSON file with any of the settings below (keys: the field names, e.g. target_length)")
    parser.set_defaults(handler=run_train_command)
    return parser


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The :class:`TrainSettings` of parsed arguments (validated)."""
    return TrainSettings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainSettings)})


def format_summary(summary: dict[str, Any]) -> str:
    """The run summary as aligned ``key  value`` lines (lists, such as every logged loss, left out)."""
    rows = [(key.replace("_", " "), value) for key, value in summary.items()
            if value is not None and not isinstance(value, list)]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def run_train_command(args: argparse.Namespace) -> int:
    from .recipe import run_training
    from .runs import end_process_group

    summary = run_training(settings_from_args(args))
    end_process_group()
    if summary.pop("main_process"):  # under accelerate launch, one summary
        if summary.get("already_complete"):
            print(f"{summary['output_dir']} already reached step {summary['global_step']}: nothing to train "
                  "(a larger --max-steps extends the run)")
        else:
            print(format_summary(summary))
    return 0
