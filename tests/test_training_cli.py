"""``hf-sinklora train`` argument handling: config files, overrides, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoConfig

from hf_sinklora.cli import apply_config_file, build_parser, main
from hf_sinklora.training.cli import settings_from_args
from hf_sinklora.training.recipe import TrainSettings


def _parse(argv):
    parser = build_parser()
    return parser.parse_args(apply_config_file(parser, ["train", *argv]))


def test_yaml_config_with_flag_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: org/model\ndataset: Yukang/LongAlpaca-12k\ntarget-length: 16384\n"
                      "output_dir: out\nlr: 2e-5\npacking: true\nsink_tokens: 8\nmax_steps: 100\n")
    settings = settings_from_args(_parse(["--config", str(config), "--max-steps", "5", "--sink-tokens", "2"]))
    assert settings == TrainSettings(model="org/model", dataset="Yukang/LongAlpaca-12k", target_length=16384,
                                     output_dir="out", lr=2e-5, packing=True, sink_tokens=2, max_steps=5)


def test_json_config_and_boolean_flags(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": "m", "dataset": "d.jsonl", "target_length": 4096, "output_dir": "o"}))
    settings = settings_from_args(_parse(["--config", str(config), "--resume", "--no-gradient-checkpointing"]))
    assert settings == TrainSettings(model="m", dataset="d.jsonl", target_length=4096, output_dir="o", resume=True,
                                     gradient_checkpointing=False)


def test_flags_take_both_spellings_and_attention_choices():
    settings = settings_from_args(_parse(["--model", "m", "--dataset", "d", "--target_length", "64",
                                          "--output-dir", "o", "--attention", "s2", "--save-steps", "0"]))
    assert (settings.target_length, settings.attention, settings.save_steps) == (64, "s2", 0)


def test_settings_validate_in_python_too():
    with pytest.raises(ValueError, match="attention must be one of"):
        TrainSettings(model="m", dataset="d", target_length=64, output_dir="o", attention="flash")
    with pytest.raises(ValueError, match="num_sink_tokens must be an int >= 0"):
        TrainSettings(model="m", dataset="d", target_length=64, output_dir="o", sink_tokens=-1)


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "d", "--target-length", "512", "--output-dir", "o"], "the following arguments are required: --model"),
    (["--model", "m", "--dataset", "d", "--target-length", "4", "--output-dir", "o"],
     "target_length must be an int >= 8"),
    (["--model", "m", "--dataset", "d", "--target-length", "512", "--output-dir", "o", "--max-steps", "0"],
     "max_steps must be -1 or an int >= 1"),
    (["--model", "m", "--dataset", "d", "--target-length", "512", "--output-dir", "o", "--lr", "0"],
     r"lr must be a number in \(0, 1\)"),
    (["--model", "m", "--dataset", "d", "--target-length", "512", "--output-dir", "o", "--dtype", "fp8"],
     "argument --dtype: invalid choice: 'fp8'"),
    (["--model", "m", "--dataset", "d", "--target-length", "512", "--output-dir", "o", "--attention", "x"],
     "argument --attention: invalid choice: 'x'"),
])
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


def test_bad_config_files(tmp_path, capsys):
    unknown = tmp_path / "bad.json"
    unknown.write_text(json.dumps({"model": "m", "dataset": "d", "target_length": 64, "output_dir": "o",
                                   "learning_rate": 1e-4}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(unknown)])
    assert "unknown setting(s) ['learning_rate'] in --config for 'train'" in capsys.readouterr().err
    toml = tmp_path / "run.toml"
    toml.write_text("model = 'm'")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(toml)])
    assert "must be a .yaml, .yml or .json file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert "does not exist" in capsys.readouterr().err


def test_bad_data_is_reported_by_field(recipe_workspace, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"instruction": "Q"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", str(recipe_workspace["base"]), "--dataset", str(data), "--target-length", "128",
              "--output-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "missing ['output']" in capsys.readouterr().err


def test_rope_type_that_cannot_be_extended_is_reported(recipe_workspace, tmp_path, capsys):
    base = tmp_path / "yarn"
    config = AutoConfig.from_pretrained(recipe_workspace["base"])
    config.rope_parameters = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                              "rope_theta": 1e4}
    shutil.copytree(recipe_workspace["base"], base)
    config.save_pretrained(base)
    with pytest.raises(SystemExit):
        main(["train", "--model", str(base), "--dataset", str(recipe_workspace["train"]), "--target-length", "4096",
              "--output-dir", str(tmp_path / "o")])
    assert "rope_type 'yarn' cannot be combined with linear position interpolation" in capsys.readouterr().err
