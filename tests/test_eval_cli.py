"""``hf-sinklora eval-ppl`` / ``passkey`` end to end on a tiny checkpoint saved to disk, and their inputs."""

from __future__ import annotations

import json
import re

import datasets
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_sinklora.cli import main
from hf_sinklora.evaluation import load_for_eval, load_texts, perplexity, tokenize_documents
from hf_sinklora.evaluation.loading import tokenizer_source

from .eval_helpers import english_tokenizer, one_torch_thread, tiny_llama  # noqa: F401 (autouse fixture)

TEXTS = [
    "The grass is green. The sky is blue. " * 30,
    "def add(a, b):\n    return a + b\n\n" * 25,
    "import os\nprint(os.getcwd())\n" * 20,
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny Llama + tokenizer, and a saved LoRA adapter (non-zero, with its own tokenizer copy)."""
    root = tmp_path_factory.mktemp("ckpt")
    tokenizer = english_tokenizer()
    model = tiny_llama(len(tokenizer), seed=4)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    torch.manual_seed(5)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    (root / "nested").mkdir()
    for index, text in enumerate(TEXTS):
        (root / ("nested" if index else "") / f"doc{index}.txt").write_text(text)
    return root


def reference_ppl(model, tokenizer, texts, length, stride=None):
    return perplexity(model, tokenize_documents(tokenizer, texts), length, stride, progress=False).perplexity


def test_eval_ppl_on_text_files_matches_the_python_api(checkpoint, text_files, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    code = main(["eval-ppl", "--model", str(checkpoint / "base"), "--data", str(text_files / "doc0.txt"),
                 str(text_files / "nested"), "--lengths", "32,64", "--stride", "16", "--batch-size", "3",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(checkpoint / "base") and report["adapter"] is None
    assert report["documents"] == 3 and report["settings"]["stride"] == 16
    assert report["settings"]["attn_implementation"] == "sf_attention"

    model = AutoModelForCausalLM.from_pretrained(checkpoint / "base")  # plain sdpa: an independent path
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "base")
    for length in (32, 64):
        row = report["results"][str(length)]
        assert row["tokens_scored"] == sum(len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
        assert row["perplexity"] == pytest.approx(reference_ppl(model, tokenizer, TEXTS, length, 16), rel=1e-4)
    table = capsys.readouterr().out
    assert "ppl" in table and "64" in table


def test_eval_ppl_with_adapter_uses_it(checkpoint, text_files, tmp_path):
    out = tmp_path / "ppl.json"
    assert main(["eval-ppl", "--model", str(checkpoint / "base"), "--adapter", str(checkpoint / "adapter"),
                 "--data", str(text_files), "--lengths", "48", "--output", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())["results"]["48"]["perplexity"]
    base = AutoModelForCausalLM.from_pretrained(checkpoint / "base")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "base")
    base_ppl = reference_ppl(base, tokenizer, TEXTS, 48)
    adapted = PeftModel.from_pretrained(base, checkpoint / "adapter")
    assert got == pytest.approx(reference_ppl(adapted, tokenizer, TEXTS, 48), rel=1e-4)
    assert abs(got - base_ppl) > 1e-3 * base_ppl  # the adapter changed the model


def test_eval_ppl_on_datasets(checkpoint, tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"content": ["unused text"]}),
        "test": datasets.Dataset.from_dict({"content": TEXTS}),
    }).save_to_disk(saved)
    out = tmp_path / "a.json"
    assert main(["eval-ppl", "--model", str(checkpoint / "base"), "--data", str(saved), "--text-column", "content",
                 "--lengths", "40", "--max-tokens", "200", "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["tokens"] == 200

    raw = tmp_path / "raw"  # a directory of data files, loaded with datasets.load_dataset like a hub id
    raw.mkdir()
    (raw / "test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out2 = tmp_path / "b.json"
    assert main(["eval-ppl", "--model", str(checkpoint / "base"), "--data", str(raw), "--lengths", "40",
                 "--max-tokens", "200", "--output", str(out2), "--no-progress"]) == 0
    assert json.loads(out2.read_text())["results"]["40"] == json.loads(out.read_text())["results"]["40"]

    out3 = tmp_path / "c.json"
    assert main(["eval-ppl", "--model", str(checkpoint / "base"), "--data", str(raw), "--lengths", "40",
                 "--join-documents", "--output", str(out3), "--no-progress"]) == 0
    joined = json.loads(out3.read_text())
    assert joined["documents"] == 1 and joined["settings"]["join_documents"] is True


def test_load_texts_sources_and_errors(tmp_path, text_files):
    assert load_texts(str(text_files)) == [TEXTS[0], TEXTS[1], TEXTS[2]]  # doc0.txt, nested/doc1, nested/doc2
    assert load_texts([str(text_files / "nested" / "doc2.txt")]) == [TEXTS[2]]
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"body": ["a b c", "  ", "d e"]}).save_to_disk(saved)
    assert load_texts(str(saved), text_column="body") == ["a b c", "d e"]
    with pytest.raises(ValueError, match="text_column 'text'.*body"):
        load_texts(str(saved))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ValueError, match="split 'test'.*train"):
        load_texts(str(tmp_path / "dd"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="data"):
        load_texts([str(empty)])
    with pytest.raises(ValueError, match="data"):
        load_texts([])


def test_cli_errors_exit_2_naming_the_parameter(checkpoint, text_files, tmp_path, capsys):
    base = ["--model", str(checkpoint / "base"), "--output", str(tmp_path / "x.json"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-ppl", *base, "--data", str(text_files), "--lengths", "16,64", "--stride", "32"])
    assert exit_info.value.code == 2 and "stride" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["passkey", *base, "--lengths", "200", "--depths", "0,2"])
    assert exit_info.value.code == 2 and "depth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-ppl", *base, "--data", str(text_files), "--lengths", "16,x"])
    assert exit_info.value.code == 2 and "integers" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_passkey_cli_writes_json_and_heatmap(checkpoint, tmp_path, capsys):
    out = tmp_path / "pk" / "pk.json"
    assert main(["passkey", "--model", str(checkpoint / "base"), "--lengths", "160,224", "--depths", "0,0.5,1",
                 "--trials", "2", "--seed", "3", "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["lengths"] == [160, 224] and report["depths"] == [0.0, 0.5, 1.0] and report["trials"] == 2
    assert len(report["cells"]) == 6 and len(report["samples"]) == 12
    assert report["plot"] == str(out.with_suffix(".png")) and out.with_suffix(".png").stat().st_size > 1000
    assert "overall accuracy" in capsys.readouterr().out


def test_loading_picks_the_adapter_tokenizer_and_dtype(checkpoint, tmp_path):
    assert tokenizer_source(str(checkpoint / "base"), str(checkpoint / "adapter")) == str(checkpoint / "adapter")
    assert tokenizer_source(str(checkpoint / "base"), str(tmp_path)) == str(checkpoint / "base")
    model, tokenizer = load_for_eval(str(checkpoint / "base"), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert model.config._attn_implementation == "sf_attention" and len(tokenizer) == model.config.vocab_size
    with pytest.raises(ValueError, match="dtype"):
        load_for_eval(str(checkpoint / "base"), dtype="float8")


def test_adapter_directory_errors_name_what_is_missing(checkpoint):
    """An adapter saved from an unnamed base cannot be loaded alone (``--adapter`` on ``--model`` can);
    ``base_model=`` only applies to adapter directories."""
    import hf_sinklora

    with pytest.raises(ValueError, match="no base_model_name_or_path"):
        load_for_eval(str(checkpoint / "adapter"), device="cpu")
    with pytest.raises(ValueError, match="not an adapter directory"):
        hf_sinklora.load_model(checkpoint / "base", base_model=checkpoint / "base")


def test_passkey_through_eviction_caches(checkpoint, tmp_path, capsys):
    """A budget that covers the prompt answers exactly as the full cache; small budgets run and are recorded."""
    base = ["passkey", "--model", str(checkpoint / "base"), "--lengths", "160", "--depths", "0,1", "--trials", "2",
            "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "full.json")]) == 0
    full = json.loads((tmp_path / "full.json").read_text())
    assert main([*base, "--cache", "h2o", "--budget", "1.0", "--prefill-chunk-size", "48",
                 "--output", str(tmp_path / "h2o_all.json")]) == 0
    kept_all = json.loads((tmp_path / "h2o_all.json").read_text())
    assert [s["answer"] for s in kept_all["samples"]] == [s["answer"] for s in full["samples"]]
    for policy in ("h2o", "snapkv", "streaming", "recent"):
        out = tmp_path / f"{policy}.json"
        assert main([*base, "--cache", policy, "--budget", "24", "--prefill-chunk-size", "32", "--output", str(out)]) == 0
        settings = json.loads(out.read_text())["settings"]
        assert (settings["cache"], settings["budget"], settings["prefill_chunk_size"]) == (policy, 24.0, 32)
        assert f"{policy} cache, budget 24, prefill in chunks of 32)" in capsys.readouterr().out, "the table says what it measured"


@pytest.mark.parametrize("extra,message", [
    (["--budget", "0.5"], "--budget needs --cache"),
    (["--cache", "h2o"], "--cache h2o needs --budget"),
    (["--cache", "h2o", "--budget", "10.5"], "must be a whole number"),
])
def test_passkey_cache_options_are_checked_first(checkpoint, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["passkey", "--model", str(checkpoint / "base"), "--lengths", "160", "--output",
              str(tmp_path / "x.json"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval-ppl", "passkey", "eval-h2o"])
@pytest.mark.parametrize("change,message", [
    (("--model", "./nope"), "model ./nope does not exist (a local path, not a hub id)"),
    (("--output", "/proc/no/such/out.json"), "--output /proc/no/such/out.json cannot be written"),
])
def test_eval_commands_check_paths_before_loading(checkpoint, text_files, tmp_path, capsys, command, change, message):
    argv = [command, "--model", str(checkpoint / "base"), "--output", str(tmp_path / "o.json"), "--no-progress"]
    argv += {"passkey": ["--lengths", "160"], "eval-ppl": ["--lengths", "32", "--data", str(text_files)],
             "eval-h2o": ["--data", str(text_files)]}[command]
    argv[argv.index(change[0]) + 1] = change[1]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_eval_ppl_missing_data_file_is_named(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval-ppl", "--model", str(checkpoint / "base"), "--data", "nofile.txt", "--lengths", "32",
              "--output", str(tmp_path / "o.json")])
    assert "dataset path nofile.txt does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval-ppl", "passkey", "eval-h2o"])
def test_help_states_each_default_once(command, capsys):
    from hf_sinklora.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "weights dtype (default: auto)" in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)
