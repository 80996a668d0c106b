"""FSDP2 (``fully_shard``) training with ``sf_attention`` on 2 CPU processes (gloo) equals one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import hf_sinklora

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process(recipe_workspace, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    subprocess.run([sys.executable, str(WORKER), str(recipe_workspace["base"]), str(single)], env=env, check=True,
                   timeout=300)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(WORKER), str(recipe_workspace["base"]), str(sharded)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = (json.loads((d / "losses.json").read_text()) for d in (single, sharded))
    assert len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4, (one, two)
    model = hf_sinklora.load_model(sharded)
    reference = hf_sinklora.load_model(single)
    assert isinstance(model, PeftModel) and model.config.rope_parameters["factor"] == 4.0
    ids = torch.arange(3, 60)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
