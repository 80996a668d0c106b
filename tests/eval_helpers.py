"""Tiny models and a local tokenizer for the evaluation tests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import hf_sinklora  # noqa: F401  (registers sf_attention)
from hf_sinklora.data.local_corpus import stdlib_source_files, train_bpe_tokenizer
from hf_sinklora.data.sources import load_texts


def english_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """BPE trained on a few stdlib sources plus English like the passkey prompt's (cheap in tokens)."""
    english = (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.\n"
        + "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 20
        + "\nThe pass key is 12345. Remember it. 12345 is the pass key.\nWhat is the pass key? The pass key is"
    )
    return train_bpe_tokenizer(load_texts(stdlib_source_files(limit=8)) + [english] * 20, vocab_size=vocab_size)


def tiny_llama(vocab_size: int, seed: int = 0, max_positions: int = 1024) -> torch.nn.Module:
    """A random 2-layer Llama (hidden 32, GQA 4/2) with ``attn_implementation="sf_attention"``, fp32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sf_attention").eval()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine two threads
    spin against other jobs (10x slower measured); restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
