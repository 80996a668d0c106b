"""A corpus every machine has: the Python standard library's own sources.

Used by the demo and the tests to train a small BPE tokenizer and cut token streams
into fixed-length training rows, with no download.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def stdlib_source_files(limit: int | None = None) -> list[Path]:
    """The standard library's top-level ``*.py`` files, sorted by name (deterministic)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no Python sources found under {stdlib}")
    return files[:limit] if limit else files


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, *, individual_digits: bool = False, add_bos: bool = False
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer on ``texts`` and wraps it for transformers.

    Args:
        texts: training text.
        vocab_size: target vocabulary size, including ``<pad> <s> </s> <unk>``.
        individual_digits: split every digit into its own token before BPE
            (``pre_tokenizers.Digits(individual_digits=True)``), so numbers are never merged:
            a small model then copies a passkey digit by digit. Off by default (numbers merge).
        add_bos: ``tokenizer(text)`` puts ``<s>`` first (``add_special_tokens=False`` does not),
            so prompts start with the same attention sink as training rows. Off by default.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if individual_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def chunk_token_ids(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], seq_len: int) -> list[list[int]]:
    """Concatenates the documents (``</s>`` between them) and cuts rows of exactly ``seq_len`` tokens."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    return [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
