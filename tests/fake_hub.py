"""A stand-in for ``huggingface_hub.HfApi`` that records calls (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub.utils import filter_repo_objects


class FakeHfApi:
    """Records ``create_repo`` / ``upload_folder``; any other API call fails the test."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, token: str | None = None, **kwargs: Any) -> None:
        self.calls.append(("__init__", {"token": token, **kwargs}))

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path: str, **kwargs: Any) -> str:
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                            ignore_patterns=kwargs.get("ignore_patterns")))
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
        self.calls.append(("upload_folder", {"folder_path": folder_path, "files": uploaded, "card": card, **kwargs}))
        return "commit"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected HfApi.{name} call: the push must be create_repo + one upload_folder")
