"""What a real user runs into: relative paths, re-used output directories, interrupts, killed
saves, and mistakes that must fail in one line before anything heavy loads."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

import hf_sinklora
from hf_sinklora.cli import main
from hf_sinklora.hub import files
from hf_sinklora.hub.files import staged_save
from hf_sinklora.training import runs
from hf_sinklora.training.recipe import TrainSettings, run_training
from hf_sinklora.training.runs import (
    TrainingInterrupted,
    latest_complete_checkpoint,
    prepare_output_dir,
    record_run,
)


def _settings(ws, out, **overrides):
    values = dict(model=str(ws["base"]), dataset=str(ws["train"]), target_length=320, output_dir=str(out),
                  max_steps=3, batch_size=2, logging_steps=1, save_steps=0, gradient_checkpointing=False,
                  disable_tqdm=True, seed=3)
    return TrainSettings(**{**values, **overrides})


def _argv(ws, out, *extra):
    return ["train", "--model", str(ws["base"]), "--dataset", str(ws["train"]), "--target-length", "320",
            "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--save-steps", "0",
            "--no-gradient-checkpointing", "--disable-tqdm", *extra]


# ------------------------------------------------------------------ 1. relative base paths

def test_a_relative_model_path_is_recorded_absolute(recipe_workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(recipe_workspace["root"])
    out = tmp_path / "out"
    settings = _settings(recipe_workspace, out, model="base", max_steps=1)
    assert settings.model == str(recipe_workspace["base"].resolve())
    run_training(settings)
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(recipe_workspace["base"].resolve())
    monkeypatch.chdir(tmp_path)
    model = hf_sinklora.load_model(out)  # from another directory
    assert model.config.rope_parameters["factor"] == 5.0


# ------------------------------------------------------------------ 2. re-used output directories

def test_a_directory_holding_a_run_is_refused_resumed_or_overwritten(tmp_path):
    out = tmp_path / "out"
    settings = {"model": "m", "lr": 1e-4, "resume": False}
    prepare_output_dir(out, settings, resume=False, overwrite=False)
    record_run(out, settings)
    (out / "checkpoint-20").mkdir()
    with pytest.raises(ValueError, match="already holds a run .*pass --resume to continue it or --overwrite"):
        prepare_output_dir(out, settings, resume=False, overwrite=False)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0001 -> 0.001\)"):
        prepare_output_dir(out, {**settings, "lr": 1e-3, "resume": True}, resume=True, overwrite=False)
    prepare_output_dir(out, {**settings, "resume": True}, resume=True, overwrite=False)  # same run: fine
    assert (out / "checkpoint-20").is_dir()
    prepare_output_dir(out, {**settings, "lr": 1e-3}, resume=False, overwrite=True)
    assert list(out.iterdir()) == []


def test_a_finished_run_is_extended_and_a_reached_one_says_so(recipe_workspace, tmp_path, capsys, caplog):
    """--resume with a larger --max-steps continues from the last checkpoint (the default saves one at
    the end), records the extension, says what happens to the schedule; at its steps it exits 0."""
    out = tmp_path / "out"
    argv = [a for a in _argv(recipe_workspace, out) if a not in ("--save-steps", "0")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    said = capsys.readouterr().out
    assert "already reached step 2: nothing to train" in said and "train loss" not in said
    extended = [*argv[: argv.index("--max-steps") + 1], "4", *argv[argv.index("--max-steps") + 2 :], "--resume"]
    with caplog.at_level("WARNING", logger="hf_sinklora.training.recipe"):
        assert main(extended) == 0
    assert re.search(r"^global step +4$", capsys.readouterr().out, re.MULTILINE)
    assert "extending the run from 2 to 4 steps at step 2" in caplog.text and "schedule is rebuilt" in caplog.text
    record = json.loads((out / runs.RUN_FILE).read_text())
    assert record["max_steps"] == 4
    assert record["extensions"] == [{"at_step": 2, "max_steps": {"from": 2, "to": 4}}]
    with pytest.raises(SystemExit) as exit_info:  # what changes the run's meaning is still refused
        main([*extended[:-1], "--lr", "1e-3", "--resume"])
    assert exit_info.value.code == 2 and "(lr: 0.0002 -> 0.001)" in capsys.readouterr().err


def test_resume_refuses_a_directory_that_is_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no sinklora_run.json"):
        prepare_output_dir(tmp_path, {}, resume=True, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        prepare_output_dir(tmp_path / "file", {}, resume=False, overwrite=False)


def test_the_cli_refuses_a_second_run_in_the_same_directory(recipe_workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(recipe_workspace, out)) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(recipe_workspace, out, "--lr", "1e-3"))
    assert exit_info.value.code == 2
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_argv(recipe_workspace, out, "--lr", "1e-3", "--resume"))
    assert "lr: 0.0002 -> 0.001" in capsys.readouterr().err
    assert main(_argv(recipe_workspace, out, "--max-steps", "1", "--overwrite")) == 0
    assert json.loads((out / runs.RUN_FILE).read_text())["max_steps"] == 1


# ------------------------------------------------------------------ 3. interrupts

def _interrupt_at(step, signum=signal.SIGINT):
    from transformers import TrainerCallback

    class RaiseSignal(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                signal.raise_signal(signum)

    return RaiseSignal()


def test_an_interrupt_saves_a_checkpoint_and_resume_finishes_the_run(recipe_workspace, tmp_path):
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with pytest.raises(TrainingInterrupted) as stop:
        run_training(_settings(recipe_workspace, out, max_steps=5), callbacks=[_interrupt_at(2)])
    assert stop.value.exit_code == 130 and stop.value.checkpoint == str(out / "checkpoint-3")
    assert "continue with --resume" in str(stop.value)
    assert not (out / "adapter_config.json").exists(), "an interrupted run must not look finished"
    assert signal.getsignal(signal.SIGINT) is before, "handlers are given back"
    summary = run_training(_settings(recipe_workspace, out, max_steps=5, resume=True))
    assert summary["resumed_from"] == str(out / "checkpoint-3")
    assert summary["global_step"] == 5
    assert (out / "adapter_config.json").is_file()


def test_sigterm_through_the_cli_exits_non_zero_with_one_line(recipe_workspace, tmp_path, capsys, monkeypatch):
    real_init = runs.SaveOnInterrupt.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and self.signum is None:
            signal.raise_signal(signal.SIGTERM)
        return real_init(self, args, state, control, **kwargs)

    monkeypatch.setattr(runs.SaveOnInterrupt, "on_step_end", on_step_end)
    assert main(_argv(recipe_workspace, tmp_path / "out", "--max-steps", "4")) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-sinklora: interrupted by SIGTERM: checkpoint saved to ")
    assert err[-1].endswith("checkpoint-1; continue with --resume")


# ------------------------------------------------------------------ 4. atomic saves

@pytest.mark.parametrize("moves_before_kill", range(4))
def test_a_killed_save_leaves_nothing_that_loads_half_written(tmp_path, monkeypatch, moves_before_kill):
    out = tmp_path / "adapter"
    with staged_save(out) as staging:  # a complete earlier save
        for name in ("adapter_config.json", "weights", "README.md", "config.json"):
            (staging / name).write_text("old")
    real_replace, moves = os.replace, []  # os.replace is atomic per file: a kill falls between two moves

    def dying_replace(src, dst):
        if len(moves) == moves_before_kill:
            raise KeyboardInterrupt("killed")
        moves.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", dying_replace)
    staging = out / ".saving-test"
    staging.mkdir()
    for name in ("adapter_config.json", "weights", "README.md", "config.json"):
        (staging / name).write_text("new")
    with pytest.raises(KeyboardInterrupt):
        files.publish(staging, out)  # 4 moves: README.md, weights, then config.json, adapter_config.json
    assert not (out / "adapter_config.json").exists(), "killed before the last move: nothing may load"
    assert not (out / "config.json").exists() or moves_before_kill == 3


def test_an_error_inside_a_save_changes_nothing(tmp_path):
    out = tmp_path / "adapter"
    with staged_save(out) as staging:
        (staging / "adapter_config.json").write_text("old")
    with pytest.raises(RuntimeError), staged_save(out) as staging:
        (staging / "adapter_config.json").write_text("new")
        raise RuntimeError("disk full")
    assert (out / "adapter_config.json").read_text() == "old"
    assert [p.name for p in out.iterdir()] == ["adapter_config.json"]


def test_resume_skips_a_checkpoint_whose_save_was_killed(tmp_path):
    for step, state in ((5, "{}"), (7, '{"global_st'), (9, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")


# ------------------------------------------------------------------ 11. one-line errors before the model loads

@pytest.mark.parametrize("change,message", [
    (("--model", "./nope"), "model ./nope does not exist (a local path, not a hub id)"),
    (("--model", "nobody/no-such-model"), "model 'nobody/no-such-model' is neither a local directory nor in the"),
    (("--dataset", "nofile.jsonl"), "dataset path nofile.jsonl does not exist"),
    (("--target-length", "64"), "target_length=64 is not above the model's context (max_position_embeddings=64)"),
])
def test_bad_inputs_fail_in_one_line(recipe_workspace, tmp_path, capsys, change, message):
    argv = _argv(recipe_workspace, tmp_path / "out")
    argv[argv.index(change[0]) + 1] = change[1]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "a failed start leaves no run"


def test_corrupt_jsonl_names_the_file_and_line(recipe_workspace, tmp_path, capsys, caplog):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n')
    argv = _argv(recipe_workspace, tmp_path / "out")
    argv[argv.index("--dataset") + 1] = str(data)
    with pytest.raises(SystemExit), caplog.at_level("ERROR"):
        main(argv)
    assert f"dataset file {data}, line 3: Expecting value" in capsys.readouterr().err
    assert not [r for r in caplog.records if "Failed to load JSON" in r.getMessage()], "datasets' own ERROR lines are noise"


def test_push_without_a_token_fails_before_training(recipe_workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(SystemExit):
        main(_argv(recipe_workspace, tmp_path / "out", "--push-to-hub", "me/model"))
    assert "needs a Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_an_unreachable_hub_fails_at_once(recipe_workspace, tmp_path, capsys, monkeypatch):
    """Neither cached nor reachable: one line, and no request that would be retried for a minute."""
    from huggingface_hub import constants

    from hf_sinklora.hub import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=5.0: False)
    argv = _argv(recipe_workspace, tmp_path / "out")
    argv[argv.index("--model") + 1] = "nobody/no-such-model"
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hf-sinklora: error: model 'nobody/no-such-model' is neither a local directory nor in the local "
                   f"cache, and {constants.ENDPOINT} cannot be reached (offline?)"]


def test_debug_shows_the_traceback(recipe_workspace, tmp_path):
    argv = _argv(recipe_workspace, tmp_path / "out")
    argv[argv.index("--model") + 1] = "./nope"
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", *argv])


# ------------------------------------------------------------------ 5. loading like any transformers model

@pytest.fixture(scope="module")
def one_step_adapter(recipe_workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "out"
    run_training(_settings(recipe_workspace, out, max_steps=1, attention="full", lr=1e-2))
    return out


def test_loading_an_adapter_raises_no_deprecation_of_the_stack(one_step_adapter, recwarn):
    from transformers import AutoModelForCausalLM

    hf_sinklora.load_model(one_step_adapter)
    AutoModelForCausalLM.from_pretrained(one_step_adapter)
    messages = [str(w.message) for w in recwarn]
    assert not any("is_gradient_checkpointing" in m for m in messages), messages


def test_plain_transformers_and_pipeline_load_base_adapter_and_rope(one_step_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    reference = hf_sinklora.load_model(one_step_adapter)
    model = AutoModelForCausalLM.from_pretrained(one_step_adapter)
    assert isinstance(model, PeftModel) and not model.training
    assert model.config.rope_parameters["factor"] == 5.0 and model.config.max_position_embeddings == 320
    assert model.config._attn_implementation == "sf_attention" and model.config.sf_attention["num_sink_tokens"] == 4
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    generator = pipeline("text-generation", model=str(one_step_adapter))
    assert generator.model.config.rope_parameters["factor"] == 5.0
    text = generator("def main():", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("def main():") and len(text) > len("def main():")


# ------------------------------------------------------------------ 6. the card tells the truth

def test_the_card_names_the_training_attention_the_real_scaling_and_the_cache_argument(one_step_adapter):
    from huggingface_hub import ModelCard

    card = ModelCard.load(one_step_adapter / "README.md")
    assert "| `attn_implementation` while training | `sdpa` |" in card.text
    assert "full causal attention (`sdpa`) during training" in card.text
    assert "Sink Fixed Attention (SF-Attn) during training" not in card.text
    assert "| scaling | linear position interpolation, factor 5.0 |" in card.text
    assert "cache=H2OCache(" in card.text and "past_key_values=" not in card.text
    assert "eval_dataset" not in card.text
    record = json.loads((one_step_adapter / "sinklora_recipe.json").read_text())
    assert record["attn_implementation"] == "sdpa"


def test_cards_of_a_cli_run_and_its_checkpoints_name_their_own_folders(recipe_workspace, tmp_path):
    """Cards are rendered inside the staging folder of the atomic save, but must name where they end up."""
    out = tmp_path / "out16k"
    assert main([*_argv(recipe_workspace, out), "--save-steps", "1"]) == 0
    cards = [out / "README.md", *sorted(out.glob("checkpoint-*/README.md"))]
    assert len(cards) >= 2, "the run and at least one checkpoint have cards"
    for card in cards:
        text = card.read_text()
        assert files.STAGING_PREFIX not in text, f"{card} names a staging folder"
        assert text.startswith("---") and f"# {card.parent.name}" in text
        assert f'load_model("{card.parent}")' in text or f"load_model('{card.parent}')" in text, text[:2000]


@pytest.mark.parametrize("packing", [False, True])
def test_rows_far_shorter_than_the_target_are_said_and_carded(recipe_workspace, tmp_path, caplog, packing):
    """A "2048-token extension" trained on rows of a few hundred tokens warns with the numbers, and
    its card says the length it was trained on (packed rows keep their sequences apart)."""
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="hf_sinklora.training.trainer"):
        run_training(_settings(recipe_workspace, out, max_steps=1, target_length=2048, packing=packing))
    warning = next(r.getMessage() for r in caplog.records if "far shorter than max_length=2048" in r.getMessage())
    longest = int(re.search(r"the longest has (\d+) tokens", warning).group(1))
    assert 0 < longest < 1024 and "(median" in warning
    card = (out / "README.md").read_text()
    assert f"trained on sequences of at most **{longest} tokens**" in card
    assert f"longest {longest}" in card
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_sinklora.training.trainer"):
        run_training(_settings(recipe_workspace, tmp_path / "fits", max_steps=1, target_length=2 * longest - 1))
    assert not [r for r in caplog.records if "far shorter" in r.getMessage()], "rows at half the target or more are fine"


def test_card_tags_and_rope_descriptions():
    from hf_sinklora.hub.card import render_model_card, rope_description

    assert rope_description({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == "none (plain RoPE)"
    assert rope_description({"rope_parameters": {
        "sliding_attention": {"rope_type": "linear", "factor": 2.0}, "full_attention": {"rope_type": "yarn"}}}) == (
        "sliding_attention: linear position interpolation, factor 2.0; full_attention: yarn (not from this recipe)")
    record = {"base_model": None, "model_type": "llama", "adapter": None, "rope": {}, "sf_attention": {},
              "datasets": [], "training": {}, "eval_results": [], "framework_versions": {}}
    card = render_model_card(record, load_path="me/model", tags=["medical", "sinklora"])
    assert card.data.tags[-1] == "medical" and card.data.tags.count("sinklora") == 1


# ------------------------------------------------------------------ 12. quiet logs

def test_training_logs_are_quiet_and_numeric(recipe_workspace, tmp_path, capsys, caplog, recwarn):
    caplog.set_level("WARNING")
    run_training(_settings(recipe_workspace, tmp_path / "out", max_steps=2, target_length=200, disable_tqdm=False))
    printed = capsys.readouterr()
    messages = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not any("is_gradient_checkpointing" in m or "pin_memory" in m for m in messages), messages
    assert not any("longer than the specified maximum" in m for m in messages), messages
    assert "step 1: loss=" in printed.out and "'loss': '" not in printed.out + printed.err
    run_training(_settings(recipe_workspace, tmp_path / "plain", max_steps=1, disable_tqdm=True))
    printed = capsys.readouterr()
    assert "step 1: loss=" in printed.out and "'loss': '" not in printed.out


# ------------------------------------------------------------------ process group teardown
def test_end_process_group_refuses_while_a_ddp_model_holds_the_group(tmp_path):
    """A DDP model alive at teardown would free the group later, in a destructor that keeps the GIL."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    runs.end_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Linear(2, 2))
        model(torch.ones(1, 2)).sum().backward()
        with pytest.raises(RuntimeError, match="DistributedDataParallel model is alive"):
            runs.end_process_group()
        assert dist.is_initialized()
        del model
        runs.end_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
