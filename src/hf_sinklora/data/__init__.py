"""Local text corpora and tokenizers (nothing here touches the network)."""

from .local_corpus import chunk_token_ids, stdlib_source_files, train_bpe_tokenizer

__all__ = ["chunk_token_ids", "stdlib_source_files", "train_bpe_tokenizer"]
