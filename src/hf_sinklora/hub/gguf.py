"""GGUF checkpoints (llama.cpp's format) as ordinary transformers models.

transformers reads a ``.gguf`` file with ``from_pretrained(folder, gguf_file=name)`` (package
``gguf``) and dequantizes its tensors. This module is the one place hf_sinklora does that: every
loader of the package (:func:`~hf_sinklora.hub.loading.load_model`, the recipe, the evaluation
commands, the demo) goes through :func:`load_pretrained`, which checks a GGUF file first
(:func:`inspect_gguf`: a bad one is one ``ValueError`` line naming the fix) and hands back a plain
model: weights dequantized, no quantizer tag, so it trains, takes adapters and saves like any
other. :func:`convert_gguf` writes such a model as an ordinary checkpoint folder.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import DTYPE_NAMES, torch_dtype
from .._warnings import quiet_logger

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
INSTALL_HINT = "pip install 'hf-sinklora[gguf]'"
SOURCE_RECORD = "gguf_source.json"
"""File that :func:`convert_gguf` writes beside the weights: which GGUF file they came from."""
_GGUF_MIN_VERSION = "0.10.0"  # what transformers' GGUF loader asks for
_UNREADABLE = (OSError, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError)


def is_gguf_file(source: Any) -> bool:
    """Whether ``source`` names a GGUF file (a path ending in ``.gguf``, whether or not it exists)."""
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(GGUF_SUFFIX)


def gguf_files_in(directory: str | Path) -> list[Path]:
    """The ``*.gguf`` files directly inside ``directory`` (sorted; empty for a non-directory)."""
    directory = Path(directory).expanduser()
    return sorted(p for p in directory.glob(f"*{GGUF_SUFFIX}") if p.is_file()) if directory.is_dir() else []


@dataclass(frozen=True)
class GgufCheckpoint:
    """What :func:`inspect_gguf` found in a GGUF file that transformers can load.

    Attributes:
        path: the file, absolute.
        architecture: ``general.architecture`` of its metadata (``"llama"``, ``"qwen2"`` ...).
        tensor_types: the GGML types of its tensors (``"F32"``, ``"Q4_1"``, ``"Q8_0"`` ...), sorted.
        config: the transformers config it loads with (no ``quantization_config``); copy before changing it.
    """

    path: Path
    architecture: str
    tensor_types: tuple[str, ...]
    config: Any


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _gguf_module() -> Any:
    """The ``gguf`` package, or a ``ValueError`` saying how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        installed = version("gguf")
    except PackageNotFoundError:
        raise ValueError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}") from None
    if Version(installed) < Version(_GGUF_MIN_VERSION):
        raise ValueError(f"gguf {installed} is too old for transformers' GGUF loader (>= {_GGUF_MIN_VERSION}): "
                         f"{INSTALL_HINT} --upgrade")
    import gguf

    return gguf


def _undequantizable(gguf: Any, types: set[Any]) -> list[str]:
    """Names of the GGML ``types`` that the gguf package cannot dequantize (probed on one zero block)."""
    import numpy as np

    refused = []
    for qtype in types:
        _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros(block_bytes, dtype=np.uint8), qtype)
        except NotImplementedError:
            refused.append(qtype.name)
    return sorted(refused)


def inspect_gguf(path: str | Path) -> GgufCheckpoint:
    """Checks that ``path`` is a GGUF file hf_sinklora can use, before any weight is read.

    In order: the file exists; the ``gguf`` package is installed; the file parses as GGUF (not
    truncated or corrupt); transformers maps its architecture to a config; that architecture has
    rotary position embeddings (what SF-Attn's recipe extends); every tensor type can be
    dequantized. Results are remembered per file (path, size, modification time), since parsing
    a large vocabulary takes seconds.

    Raises:
        ValueError: one line naming the problem and the fix.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"GGUF file {path} is not a file")
    stat = path.stat()
    return _inspect_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _inspect_cached(path_text: str, size: int, mtime_ns: int) -> GgufCheckpoint:
    from transformers import AutoConfig

    path = Path(path_text)
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields.get("general.architecture")
        architecture = field.contents() if field is not None else None
        types = {tensor.tensor_type for tensor in reader.tensors}
    except _UNREADABLE as error:
        raise ValueError(f"{path} is not a readable GGUF file (corrupt or truncated?): {_first_line(error)}; "
                         "download it again") from None
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"{path} has no general.architecture in its metadata: not a model GGUF")
    try:
        # transformers logs its guesses about metadata a file lacks; the checks below say what matters
        with quiet_logger("transformers.modeling_gguf_pytorch_utils", logging.ERROR):
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=str(path))
    except (*_UNREADABLE, NotImplementedError) as error:
        raise ValueError(f"transformers cannot load GGUF architecture {architecture!r} from {path.name} "
                         f"({_first_line(error)}); use the model's safetensors checkpoint instead") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    text_config = config.get_text_config()
    if not getattr(text_config, "rope_parameters", None):
        raise ValueError(f"{path.name}: architecture {architecture!r} (model_type {config.model_type!r}) has no "
                         "rotary position embeddings; SinkLoRA extends RoPE models (Llama, Mistral, Qwen2/3, Gemma, "
                         "Phi3, GPT-NeoX ...): use a GGUF of one of those")
    if not types:
        raise ValueError(f"{path} holds no tensors (metadata only?); use a GGUF with the model's weights")
    refused = _undequantizable(gguf, types)
    if refused:
        raise ValueError(f"{path.name} holds tensors of type {', '.join(refused)}, which the installed gguf package "
                         "cannot dequantize; use a GGUF quantized as F32, F16, BF16, Q8_0, Q4_K ... "
                         f"(or a newer gguf: {INSTALL_HINT} --upgrade)")
    logger.info("%s: GGUF %s, tensors %s", path.name, architecture, ", ".join(sorted(t.name for t in types)))
    return GgufCheckpoint(path=path, architecture=architecture, tensor_types=tuple(sorted(t.name for t in types)),
                          config=config)


def _is_config_class(auto_class: Any) -> bool:
    from transformers import AutoConfig, PreTrainedConfig

    return auto_class is AutoConfig or (isinstance(auto_class, type) and issubclass(auto_class, PreTrainedConfig))


def _is_model_class(auto_class: Any) -> bool:
    from transformers import PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    return isinstance(auto_class, type) and issubclass(auto_class, (PreTrainedModel, _BaseAutoModelClass))


def _plain_model(model: Any, path: Path) -> Any:
    """``model`` without what marks it as loaded from GGUF: the quantizer and its config, then
    ``name_or_path`` pointed at the file (so an adapter trained on it records its base)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dequantize=True normally removes it already
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(path)
    model.name_or_path = str(path)
    return model


def load_pretrained(auto_class: Any, source: str | Path, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(source, **kwargs)``, a ``.gguf`` file included.

    A GGUF file (a ``source`` ending in ``.gguf``) is checked with :func:`inspect_gguf`, then loaded
    through transformers' GGUF support with ``GgufConfig(dequantize=True)``: a model comes back
    plain (dense weights, no ``hf_quantizer``, no ``quantization_config``), trainable and
    saveable, with ``name_or_path`` the GGUF file; a config comes back without
    ``quantization_config``; a tokenizer is the one in the file's metadata. Any other ``source``
    goes to ``from_pretrained`` unchanged.

    Args:
        auto_class: ``AutoConfig``, ``AutoTokenizer``, ``AutoModelForCausalLM`` or any class with
            ``from_pretrained``.
        source: a GGUF file, a local directory or a hub id.
        **kwargs: passed to ``from_pretrained`` (``dtype``, ``attn_implementation``, ``config`` ...).

    Raises:
        ValueError: a GGUF file that cannot be used (see :func:`inspect_gguf`), or one that
            transformers fails to load (one line).
    """
    if not is_gguf_file(source):
        return auto_class.from_pretrained(source, **kwargs)
    checkpoint = inspect_gguf(source)
    if _is_config_class(auto_class) and not kwargs:
        return copy.deepcopy(checkpoint.config)
    from transformers import PreTrainedModel
    from transformers.utils.quantization_config import GgufConfig

    path = checkpoint.path
    if not _is_model_class(auto_class):  # a config with kwargs, a tokenizer
        loaded = auto_class.from_pretrained(str(path.parent), gguf_file=str(path), **kwargs)
    else:
        kwargs.setdefault("quantization_config", GgufConfig(dequantize=True))
        try:
            loaded = auto_class.from_pretrained(str(path.parent), gguf_file=str(path), **kwargs)
        except (ValueError, NotImplementedError, KeyError) as error:
            raise ValueError(f"transformers failed to load {path.name}: {_first_line(error)}") from None
    if isinstance(loaded, PreTrainedModel):
        return _plain_model(loaded, path)
    if hasattr(loaded, "quantization_config") and _is_config_class(type(loaded)):
        del loaded.quantization_config
    return loaded


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuses an ``output_dir`` that is a file, or holds files without ``overwrite`` (writes nothing)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output directory {output_dir} is a file; name a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"output directory {output_dir} exists and is not empty; name a new folder or pass "
                         "--overwrite (overwrite=True) to replace it")


def _make_parent(output_dir: Path) -> None:
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"output directory {output_dir} cannot be created: {error.strerror or error}") from None
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output directory {output_dir} cannot be written: {parent} is read-only")


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Renames ``staging`` to ``output_dir``; an existing ``output_dir`` is set aside first and
    removed only once the new one is in place (restored if the rename fails)."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    aside.rmdir()
    os.replace(output_dir, aside)
    try:
        os.replace(staging, output_dir)
    except OSError:
        os.replace(aside, output_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def convert_gguf(source: str | Path, output_dir: str | Path, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Writes a GGUF file as an ordinary checkpoint folder that plain
    ``AutoModelForCausalLM.from_pretrained(output_dir)`` / ``AutoTokenizer.from_pretrained(output_dir)`` load.

    The folder holds ``model.safetensors``, ``config.json``, ``generation_config.json``, the
    tokenizer (``tokenizer.json``, its config and chat template) and :data:`SOURCE_RECORD` (which
    GGUF file, architecture and tensor types the weights came from). Everything is checked before
    anything is written (:func:`inspect_gguf`), written into a hidden staging folder beside
    ``output_dir`` and renamed into place at the end: on any failure ``output_dir`` is as it was.

    Args:
        source: the ``.gguf`` file.
        output_dir: the folder to write (created; it must be empty or absent unless ``overwrite``).
        dtype: one of ``"auto"`` (the dequantized float32), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        overwrite: replace an ``output_dir`` that holds files.

    Returns:
        ``output_dir`` as an absolute path.

    Raises:
        ValueError: a bad argument, a missing, corrupt or unusable GGUF file (see
            :func:`inspect_gguf`), or an ``output_dir`` that cannot be written (one line each).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not is_gguf_file(source):
        raise ValueError(f"source must be a .gguf file, got {source!r}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {dtype!r}")
    output_dir = Path(output_dir).expanduser().absolute()
    _check_output_dir(output_dir, overwrite)
    checkpoint = inspect_gguf(source)
    if output_dir.resolve() in checkpoint.path.parents:
        raise ValueError(f"output directory {output_dir} holds the GGUF file itself; name another folder")
    _make_parent(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        try:
            tokenizer = load_pretrained(AutoTokenizer, checkpoint.path)
        except (*_UNREADABLE, NotImplementedError) as error:
            raise ValueError(f"the tokenizer of {checkpoint.path.name} cannot be read: {_first_line(error)}") from None
        logger.info("loading %s (dequantizing %s)", checkpoint.path.name, ", ".join(checkpoint.tensor_types))
        model = load_pretrained(AutoModelForCausalLM, checkpoint.path, dtype=torch_dtype(dtype))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"gguf_file": checkpoint.path.name, "architecture": checkpoint.architecture,
                  "tensor_types": list(checkpoint.tensor_types), "dtype": str(model.dtype).removeprefix("torch.")}
        (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private
        _move_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s (%s, %s)", output_dir, record["architecture"], record["dtype"])
    return output_dir


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
