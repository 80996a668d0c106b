"""The documentation builds offline, every page reachable, the API reference from docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mkdocs_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "H2OCache" in reference and "budget" in reference  # generated from the docstrings
    for page in ("sf_attention", "h2o", "training", "evaluation", "cli", "results", "troubleshooting"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
