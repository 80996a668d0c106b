"""``examples/train_sinklora.py`` as documented: plain run, ``accelerate launch`` on 2 CPU processes, configs."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser
from huggingface_hub import ModelCard
from peft import PeftModel

import hf_sinklora
from hf_sinklora.training.recipe import TrainSettings, build_trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example_args(ws, out, *extra):
    return ["--model", str(ws["base"]), "--dataset", str(ws["train"]), "--target-length", "320",
            "--output-dir", str(out), "--max-steps", "3", "--batch-size", "2", "--gradient-accumulation-steps", "1",
            "--logging-steps", "1", *extra]


def test_example_runs_as_documented(recipe_workspace, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["train_sinklora.py", *_example_args(recipe_workspace, out, "--sink-tokens", "3")])
    runpy.run_path(str(EXAMPLES / "train_sinklora.py"), run_name="__main__")
    model = hf_sinklora.load_model(out)
    assert isinstance(model, PeftModel)
    assert model.config.sf_attention["num_sink_tokens"] == 3 and model.config.rope_parameters["factor"] == 5.0
    assert "sinklora" in ModelCard.load(out / "README.md").data.tags


def test_example_builds_the_recipes_trainer(recipe_workspace, tmp_path):
    """The copy-me script and ``hf-sinklora train`` (``build_trainer``) must not drift apart."""
    example = runpy.run_path(str(EXAMPLES / "train_sinklora.py"))
    out = tmp_path / "out"
    from_example = example["build_trainer"](example["parse_args"](_example_args(recipe_workspace, out)))
    from_recipe = build_trainer(TrainSettings(
        model=str(recipe_workspace["base"]), dataset=str(recipe_workspace["train"]), target_length=320,
        output_dir=str(out), max_steps=3, batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
    ))
    assert from_example.args.to_dict() == from_recipe.args.to_dict()

    def trainable(trainer):
        return {name: tuple(p.shape) for name, p in trainer.model.named_parameters() if p.requires_grad}

    assert trainable(from_example) == trainable(from_recipe) and trainable(from_recipe)
    assert from_example.model.config.to_dict() == from_recipe.model.config.to_dict()
    assert from_example.dataset_names == from_recipe.dataset_names
    assert len(from_example.train_dataset) == len(from_recipe.train_dataset)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(recipe_workspace, tmp_path):
    """DDP with gloo on CPU: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
               str(EXAMPLES / "train_sinklora.py"), *_example_args(recipe_workspace, out, "--no-gradient-checkpointing")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    examples = len(recipe_workspace["train"].read_text().splitlines())
    # 2 processes x 2 examples per step: each step consumed 4 distinct examples
    assert state["global_step"] == 3
    assert state["epoch"] == pytest.approx(3 * 2 * 2 / examples, rel=1e-3)
    assert "| world_size | 2 |" in (out / "README.md").read_text()
    assert isinstance(hf_sinklora.load_model(out), PeftModel)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_are_valid(name):
    path = EXAMPLES / "accelerate" / name
    config = ClusterConfig.from_yaml_file(path)  # unknown top-level keys raise
    launch_options = {action.dest for action in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            assert key in launch_options, f"{name}: {section}.{key} is no accelerate launch option"
    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP"}.get(name, "DEEPSPEED")
    assert config.distributed_type.value == expected
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-6])
