"""Loading SinkLoRA outputs: adapter directories and merged/plain model directories."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .._warnings import without_known_deprecations
from .adapter_config import SinkLoRAAdapterConfig
from .gguf import GGUF_SUFFIX, gguf_files_in, is_gguf_file, load_pretrained

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"


def _is_local_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def _read_adapter_config(path: str, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter config as a dict, or None when ``path`` holds no adapter."""
    if is_gguf_file(path):
        return None
    if _is_local_dir(path):
        file = Path(path) / ADAPTER_CONFIG
        return json.loads(file.read_text()) if file.is_file() else None
    from transformers.utils import find_adapter_config_file

    file = find_adapter_config_file(path, **hub_kwargs)
    return json.loads(Path(file).read_text()) if file else None


def _has_model_config(path: str, hub_kwargs: dict[str, Any]) -> bool:
    if _is_local_dir(path):
        return (Path(path) / MODEL_CONFIG).is_file()
    from huggingface_hub import file_exists

    return file_exists(path, MODEL_CONFIG, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub's host answers at all (a DNS failure or refused connection answers at once)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_config_or_error(name: str | Path) -> Any:
    """``AutoConfig`` of a local directory, GGUF file or hub id, or one ``ValueError`` line saying why not.

    A hub id that is neither in the local cache nor reachable fails at once, instead of after a
    minute of retries: the cache is tried first (``local_files_only``), then the Hub's host. A
    GGUF file is checked by :func:`~hf_sinklora.hub.gguf.inspect_gguf`; a directory that holds
    GGUF files but no ``config.json`` is refused with the fix named.
    """
    import os

    from huggingface_hub import constants
    from transformers import AutoConfig

    from ..data.sources import looks_like_path

    name = str(name)
    if (looks_like_path(name) or is_gguf_file(name)) and not Path(name).expanduser().exists():
        raise ValueError(f"model {name} does not exist (a local path, not a hub id)")
    if is_gguf_file(name):
        return load_pretrained(AutoConfig, name)
    found = gguf_files_in(name)
    if found and not (Path(name).expanduser() / MODEL_CONFIG).is_file():
        raise ValueError(f"{name} holds {GGUF_SUFFIX} files but no {MODEL_CONFIG}: pass the file itself "
                         f"({found[0]}) or convert it: hf-sinklora convert-gguf {found[0]} OUT_DIR")
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass  # not local, not cached: the Hub it is
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ValueError(f"model {name!r} is neither a local directory nor in the local cache, and the Hub is "
                         "switched off (HF_HUB_OFFLINE)")
    if not _hub_reachable():
        raise ValueError(f"model {name!r} is neither a local directory nor in the local cache, and "
                         f"{constants.ENDPOINT} cannot be reached (offline?)")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model {name!r} cannot be loaded: {first_line}") from None


def load_model(
    path: str | Path, merge: bool = False, base_model: str | Path | None = None, **from_pretrained_kwargs: Any
) -> Any:
    """Loads a SinkLoRA output for generation (in eval mode).

    An *adapter directory* (``adapter_config.json``) loads its base model from
    ``base_model_name_or_path`` with the directory's ``config.json`` (RoPE scaling,
    ``sf_attention`` settings), then the adapter and the trained embedding/norm weights via
    ``peft.PeftModel.from_pretrained``. Any other directory or hub id loads as a plain model, and
    so does a ``.gguf`` file (dequantized; see :func:`~hf_sinklora.hub.gguf.load_pretrained`), as
    a model or as an adapter's base.
    Either way ``attn_implementation`` defaults to ``"sf_attention"`` (full causal attention in
    eval mode, ready for ``generate(past_key_values=H2OCache(...))``).

    Args:
        path: local directory or hub id.
        merge: merge the adapter into the base weights and return the plain model.
        base_model: load an adapter onto this base (path or hub id) instead of its recorded one.
        **from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` of the base
            (``dtype``, ``device_map``, ``revision``, ``token`` ...).

    Returns:
        ``peft.PeftModel`` for an adapter (``PreTrainedModel`` with ``merge=True``), else the
        ``PreTrainedModel``.

    Raises:
        ValueError: an adapter without ``base_model_name_or_path``, or a GGUF file that cannot be used.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = str(path)
    kwargs = dict(from_pretrained_kwargs)
    kwargs.setdefault("attn_implementation", "sf_attention")
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}
    adapter_config = _read_adapter_config(path, hub_kwargs)
    if adapter_config is None:
        if base_model is not None:
            raise ValueError(f"base_model was given, but {path} is not an adapter directory (no {ADAPTER_CONFIG})")
        model = load_pretrained(AutoModelForCausalLM, path, **kwargs)
        return model.eval()

    from peft import PeftModel

    base = str(base_model) if base_model is not None else adapter_config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/{ADAPTER_CONFIG} has no base_model_name_or_path; cannot find the base model")
    base_kwargs = {k: v for k, v in kwargs.items() if k != "revision"}  # the revision is the adapter's
    if "config" not in base_kwargs:
        if _has_model_config(path, hub_kwargs):
            config = AutoConfig.from_pretrained(path, **hub_kwargs)
            # SinkLoRA adapters wrap the base config (see hub/auto.py); older saves hold it plainly
            base_kwargs["config"] = config.to_base_config() if isinstance(config, SinkLoRAAdapterConfig) else config
        else:
            logger.warning(
                "%s has no %s: the base model's RoPE and sf_attention settings are used (saved without "
                "SinkLoRATrainer?)", path, MODEL_CONFIG,
            )
    model = load_pretrained(AutoModelForCausalLM, base, **base_kwargs)
    with without_known_deprecations():
        model = PeftModel.from_pretrained(model, path, **hub_kwargs)
    if merge:
        model = model.merge_and_unload()
    return model.eval()


def merge_adapter(path: str | Path, output_dir: str | Path, **from_pretrained_kwargs: Any) -> Any:
    """Merges an adapter directory into its base and saves a plain model to ``output_dir``.

    The merged model's ``config.json`` keeps the RoPE scaling and ``sf_attention`` settings;
    the tokenizer is copied when the adapter directory has one, and the card is rendered for
    the merged model.

    Returns:
        The merged ``PreTrainedModel`` (eval mode).
    """
    from transformers import AutoTokenizer

    from .card import RECIPE_FILE, write_model_card

    model = load_model(path, merge=True, **from_pretrained_kwargs)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    try:
        AutoTokenizer.from_pretrained(str(path)).save_pretrained(output_dir)
    except (OSError, ValueError):
        logger.info("no tokenizer in %s; none copied", path)
    record_file = Path(path) / RECIPE_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        record["adapter"] = None
        record["merged_from"] = str(path)
        write_model_card(output_dir, record)
    return model
