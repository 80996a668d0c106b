"""Uploading a SinkLoRA output to the Hugging Face Hub in one commit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .card import CARD_FILE, RECIPE_FILE, write_model_card

logger = logging.getLogger(__name__)

_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "training_args.bin", "*.pt", "*.pth"]


def push_adapter(
    path: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload SinkLoRA adapter and model card",
    revision: str | None = None,
) -> Any:
    """Uploads an adapter (or merged model) directory and its card in ONE commit.

    ``HfApi().create_repo(repo_id, exist_ok=True)`` then ``upload_folder``. The card is
    rendered again with ``repo_id`` as the load path before the upload, so its snippets name
    the repo. Checkpoints, TensorBoard runs and optimizer/trainer state are not uploaded.

    Args:
        path: a directory saved by ``SinkLoRATrainer`` / ``save_sinklora_files``.
        repo_id: ``"user/name"`` on the Hub.
        token: Hub token (default: the logged-in one).
        private: create the repo private (None: the Hub's default).
        commit_message: message of the single commit.
        revision: branch to commit to.

    Returns:
        ``huggingface_hub.CommitInfo`` of the upload.

    Raises:
        ValueError: ``path`` holds neither an adapter nor a model, or ``repo_id`` is empty.
    """
    from huggingface_hub import HfApi

    path = Path(path)
    if not repo_id or not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a non-empty 'user/name' string, got {repo_id!r}")
    if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        raise ValueError(f"path {path} holds neither adapter_config.json nor config.json: nothing to push")
    if (path / RECIPE_FILE).is_file():
        write_model_card(path, load_path=repo_id, model_name=repo_id.rsplit("/", 1)[-1])
    elif not (path / CARD_FILE).is_file():
        logger.warning("%s has no model card (%s) and no %s; pushing without a card", path, CARD_FILE, RECIPE_FILE)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(path), commit_message=commit_message, revision=revision,
        repo_type="model", ignore_patterns=_IGNORE,
    )
    logger.info("pushed %s to %s", path, repo_id)
    return info
