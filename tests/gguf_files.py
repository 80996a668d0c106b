"""Small GGUF files written with the ``gguf`` package's own writer, for tests: a tiny random Llama
with a byte-level BPE tokenizer (what llama.cpp's converter writes for SmolLM2-like models), and
broken or unusable variants. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTEXT = 64


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 base tokens of a byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for _, code in sorted(zip(printable, codes))]


def _writer(path: Path, architecture: str):
    import gguf

    return gguf.GGUFWriter(str(path), architecture)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama_gguf(path: str | Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
                     ffn: int = 64, seed: int = 0, tensor_type: str = "F32") -> Path:
    """A tiny random Llama GGUF (``CONTEXT`` positions) with a byte-level BPE tokenizer (``<s>`` 0,
    ``</s>`` 1, ``<|endoftext|>`` 2, 256 byte tokens, two merges). ``tensor_type="Q8_0"`` quantizes the 2-D weights."""
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    writer = _writer(path, "llama")
    writer.add_block_count(layers)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    tokens = ["<s>", "</s>", "<|endoftext|>", *_byte_tokens(), "Ġt", "Ġth"]  # transformers' GPT-2 converter adds
    # <|endoftext|> past the vocabulary when the file lacks it
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["Ġ t", "Ġt h"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_vocab_size(len(tokens))
    head_dim = hidden // heads

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        if tensor_type == "F32":
            writer.add_tensor(name, values)
        else:
            qtype = gguf.GGMLQuantizationType[tensor_type]
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)

    matrix("token_embd.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ffn)
    _finish(writer)
    return path


def write_gpt2_gguf(path: str | Path) -> Path:
    """A GPT-2 GGUF (learned absolute positions, no RoPE): config metadata and one tensor."""
    path = Path(path)
    writer = _writer(path, "gpt2")
    writer.add_block_count(2)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_layer_norm_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.zeros((10, 32), np.float32))
    _finish(writer)
    return path


def write_unknown_architecture_gguf(path: str | Path) -> Path:
    """A GGUF whose ``general.architecture`` transformers has no loader for (``rwkv6``)."""
    path = Path(path)
    writer = _writer(path, "rwkv6")
    writer.add_block_count(2)
    _finish(writer)
    return path


def write_q8_k_gguf(path: str | Path) -> Path:
    """A Llama GGUF whose one tensor is Q8_K, a type the gguf package cannot dequantize."""
    import gguf

    path = Path(path)
    writer = _writer(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(256)
    writer.add_head_count(4)
    _, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_K]
    writer.add_tensor("token_embd.weight", np.zeros((4, block_bytes), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    _finish(writer)
    return path
