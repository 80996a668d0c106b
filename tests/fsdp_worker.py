"""Run by ``torch.distributed.run``: the recipe's model trained under FSDP2 (``fully_shard``) on CPU
processes with gloo, for ``test_fsdp.py``; without a process group it is the single-process run.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py BASE OUT
    python tests/fsdp_worker.py BASE OUT

Every process takes its share of the same global batch; the loss is the token mean over the
whole global batch in both cases, so the two runs compute the same numbers. Writes
``OUT/losses.json`` and, from rank 0, the adapter (gathered full state dict) with its SinkLoRA files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import AutoModelForCausalLM

import hf_sinklora

GLOBAL_BATCH, LENGTH, STEPS, TARGET = 4, 96, 3, 256


def main(base: str, out: str) -> None:
    distributed = "RANK" in __import__("os").environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sf_attention", dtype=torch.float32)
    hf_sinklora.extend_context(model, TARGET)
    hf_sinklora.configure_sf_attention(model, num_sink_tokens=2)
    model = get_peft_model(model, hf_sinklora.sinklora_lora_config(model, r=4, alpha=8))
    if distributed:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = torch.randint(3, model.config.vocab_size, (STEPS, GLOBAL_BATCH, LENGTH),
                         generator=torch.Generator().manual_seed(1))
    share = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        rows = data[step, rank * share : (rank + 1) * share]
        logits = model(input_ids=rows).logits[:, :-1].float()
        summed = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
        tokens = GLOBAL_BATCH * (LENGTH - 1)
        # FSDP averages gradients over processes: scale so the result is the global token mean
        (summed * world / tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
        total = summed.detach()
        if distributed:
            dist.all_reduce(total)
        losses.append(total.item() / tokens)
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict()
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, state_dict=state)
        hf_sinklora.save_sinklora_files(model, out)
        (Path(out) / "losses.json").write_text(json.dumps(losses))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
