"""``hf-sinklora`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from .demo import DemoSettings, format_summary, run_demo
from .evaluation.cli import add_eval_parsers
from .training.cli import add_train_parser


_FIELD_TYPES = {"int": int, "float": float, "str": str}


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="pretrain (or load) a base, extend its context 4x with SinkLoRA, evaluate, generate with H2O"
    )
    for field in dataclasses.fields(DemoSettings):
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if field.type == "list[str]":
            parser.add_argument(flag, nargs="+", default=[], help=help_text)
            continue
        kind = _FIELD_TYPES[field.type.replace(" | None", "")]
        if "default" not in help_text:
            help_text = f"{help_text} (default: {field.default})"
        parser.add_argument(flag, type=kind, default=field.default, help=help_text)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings)})
    summary = run_demo(settings)
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-sinklora", description="SinkLoRA for the Hugging Face stack")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    add_eval_parsers(subparsers)
    add_train_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ValueError as error:
        parser.exit(2, f"hf-sinklora: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
