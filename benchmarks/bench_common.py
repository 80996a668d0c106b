"""Pieces every benchmark script shares: device helpers, the environment record, plot axes."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

import hf_sinklora

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def package_digest() -> str:
    """Short sha256 of every ``.py`` file of the imported ``hf_sinklora`` package."""
    root = Path(hf_sinklora.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def add_dtype_argument(parser: Any) -> None:
    """``--dtype``, one of :data:`DTYPE_NAMES`; None until :func:`dtype_name_for` fills in the device's default."""
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: float32 on CPU, bfloat16 on CUDA")


def dtype_name_for(dtype: str | None, device: str) -> str:
    """``dtype``, or when None the device's default: float32 on the CPU, bfloat16 on CUDA."""
    return dtype or ("float32" if device == "cpu" else "bfloat16")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def synchronize(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware the numbers were taken on."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_sinklora": hf_sinklora.__version__,
        "hf_sinklora_source_digest_at_start": package_digest(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "device": device,
        "device_name": device_name(device),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if is_cuda(device):
        env["cuda"] = torch.version.cuda
    return env


def length_axis(axis: Any, lengths: Sequence[int], label: str = "sequence length n") -> None:
    """Log-2 x axis labelled with the measured lengths."""
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(lengths), [str(n) for n in lengths])
    axis.minorticks_off()
    axis.set_xlabel(label)


def configure_logging() -> None:
    """INFO logs of the benchmark on stderr; the libraries' own INFO chatter left out."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "trl", "datasets", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Real model shapes (random weights: step and prefill times depend on the shapes only).
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M (the real checkpoint of issue 22): 30 layers, 9 query / 3 KV heads of 64, tied embeddings
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=1e5,
                         tie_word_embeddings=True),
    # four layers of Llama-3-8B: hidden 4096, 32 query / 8 KV heads of 128, MLP 14336, vocabulary 128256
    "llama3-8b-slice": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=5e5,
                            tie_word_embeddings=False),
}


def model_shape_config(name: str, max_length: int) -> "transformers.LlamaConfig":
    """The ``LlamaConfig`` of :data:`MODEL_SHAPES` ``[name]`` with room for ``max_length`` positions."""
    return transformers.LlamaConfig(**MODEL_SHAPES[name], max_position_embeddings=max_length)


def model_from_config(config: Any, device: str, dtype: torch.dtype, attn_implementation: str, seed: int = 0) -> Any:
    """A random ``AutoModelForCausalLM`` built directly on ``device`` (a 1.4B-parameter slice would take
    minutes to initialise on the host first)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return model.to(device)
