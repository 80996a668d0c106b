"""``hf-sinklora`` command line.

Sub-commands whose options are a settings dataclass (``demo``, ``train``) get their flags from
transformers' ``HfArgumentParser``. ``--config FILE`` (YAML or JSON, keys named like the flags)
turns the file's values into the sub-command's defaults, so flags given too override the file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ._checks import DTYPE_NAMES
from .demo import DemoSettings, format_summary, run_demo
from .evaluation.cli import add_eval_parsers
from .training.cli import add_train_parser
from .training.runs import TrainingInterrupted


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", dataclass_types=[DemoSettings],
        help="pretrain (or load) a base, extend its context 4x with SinkLoRA, evaluate, generate with H2O",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings)})
    summary = run_demo(settings)
    print(format_summary(summary))
    return 0


def _add_convert_gguf(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-gguf", formatter_class=argparse.HelpFormatter,
        help="write a GGUF file as an ordinary checkpoint folder (safetensors + tokenizer + config)",
        description="Dequantize a .gguf file (llama.cpp's format) with transformers and save it as a folder that "
                    "AutoModelForCausalLM.from_pretrained loads. Needs the gguf package: pip install 'hf-sinklora[gguf]'.",
    )
    parser.add_argument("source", metavar="SRC.gguf", help="the GGUF file")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write (absent or empty, unless --overwrite)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES,
                        help="weights dtype (default: auto, the dequantized float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR when it holds files")
    parser.set_defaults(handler=_run_convert_gguf)


def _run_convert_gguf(args: argparse.Namespace) -> int:
    from .hub.gguf import convert_gguf

    output_dir = convert_gguf(args.source, args.output_dir, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {output_dir}: AutoModelForCausalLM.from_pretrained({str(output_dir)!r}) loads it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-sinklora`` parser with every sub-command (each an ``HfArgumentParser``)."""
    parser = argparse.ArgumentParser(prog="hf-sinklora", description="SinkLoRA for the Hugging Face stack")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    _add_demo(subparsers)
    add_eval_parsers(subparsers)
    add_train_parser(subparsers)
    _add_convert_gguf(subparsers)
    return parser


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"--config file {path} does not exist")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValueError(f"--config must be a .yaml, .yml or .json file, got {path.name}")
    values = yaml.safe_load(path.read_text()) or {}  # JSON is YAML
    if not isinstance(values, dict):
        raise ValueError(f"--config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Takes ``--config FILE`` out of ``argv`` and makes the file's values the defaults of the
    sub-command named in ``argv`` (no longer required, still overridden by flags).

    Raises:
        ValueError: a missing or unreadable file, or keys the sub-command does not take.
    """
    if "--config" not in argv:
        return argv
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise ValueError("--config needs a file name")
    values = _read_config_file(Path(argv[index + 1]))
    argv = argv[:index] + argv[index + 2 :]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((arg for arg in argv if arg in subparsers.choices), None)
    if command is None:
        raise ValueError("--config goes with a sub-command, e.g. hf-sinklora train --config run.yaml")
    actions = {action.dest: action for action in subparsers.choices[command]._actions}
    unknown = sorted(set(values) - set(actions) - {"help", "config", "handler"})
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} in --config for {command!r}; "
                         f"allowed: {sorted(set(actions) - {'help', 'config'})}")
    for key, value in values.items():
        actions[key].default = value
        actions[key].required = False
    return argv


@contextlib.contextmanager
def logs_beside_progress_bars() -> Iterator[None]:
    """Log lines written through tqdm (``logging_redirect_tqdm``), so that they start on a line of
    their own instead of being glued to a progress bar; transformers' own handler included."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger(), logging.getLogger("transformers")]):
        yield


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(apply_config_file(parser, argv))
    except ValueError as error:
        parser.exit(2, f"hf-sinklora: error: {error}\n")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with logs_beside_progress_bars():
            return args.handler(args)
    except TrainingInterrupted as stop:
        print(f"hf-sinklora: {stop}", file=sys.stderr)
        return stop.exit_code
    except ValueError as error:
        if args.debug:
            raise
        parser.exit(2, f"hf-sinklora: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
