"""A training run's output directory: one run per directory, resumable, interruptible.

* :func:`prepare_output_dir` refuses a directory that holds another run, unless the run is
  resumed (same recorded settings) or overwritten (cleared first); :func:`record_run` records
  the settings when training starts.
* :func:`latest_complete_checkpoint` is the newest ``checkpoint-N`` whose save finished.
* :class:`SaveOnInterrupt` turns Ctrl-C / SIGTERM into "save a checkpoint and stop".
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..hub.files import write_text_atomic

logger = logging.getLogger(__name__)

RUN_FILE = "sinklora_run.json"
# settings that may change between a run and its resumption (a run directory may also be moved);
# max_steps extends (or, below the step reached, ends) the run: every change is kept in the record
RESUMABLE_CHANGES = ("output_dir", "resume", "overwrite", "push_to_hub", "report_to", "disable_tqdm", "logging_steps",
                     "max_steps", "save_steps")
EXTENSIONS_KEY = "extensions"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving ``checkpoint``; ``exit_code`` is the shell's (128 + signal)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {where}; continue with --resume")


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(recorded) | set(current)) - set(RESUMABLE_CHANGES) - {EXTENSIONS_KEY})
    return [f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}" for key in keys if recorded.get(key) != current.get(key)]


def prepare_output_dir(
    output_dir: str | Path, settings: dict[str, Any], *, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Makes ``output_dir`` ready for a run of ``settings`` (a JSON-able dict); :func:`record_run`
    writes them once training starts (a run that fails before that leaves no record behind).

    Returns:
        The recorded settings of the run being resumed, or None.

    Raises:
        ValueError: the directory holds another run and neither ``resume`` nor ``overwrite``
            is set; ``resume`` with different settings (each difference named); the path is a
            file or not writable.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file, not a directory")
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if entries and overwrite:
        logger.info("--overwrite: clearing %s", output_dir)
        for name in entries:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif entries and resume:
        record = output_dir / RUN_FILE
        if not record.is_file():
            raise ValueError(f"--resume: output_dir {output_dir} holds {entries[:4]} but no {RUN_FILE}, "
                             "so it is not a run of this tool to continue; use another --output-dir or --overwrite")
        recorded = json.loads(record.read_text())
        differences = _differences(recorded, settings)
        if differences:
            raise ValueError(f"--resume: output_dir {output_dir} holds a run with other settings "
                             f"({'; '.join(differences)}); resume with the same settings (only "
                             f"{', '.join(RESUMABLE_CHANGES[-2:])} and logging may change), or use --overwrite")
    elif entries:
        shown = ", ".join(entries[:4]) + (" ..." if len(entries) > 4 else "")
        raise ValueError(f"output_dir {output_dir} already holds a run ({shown}); pass --resume to continue it "
                         "or --overwrite to replace it")
    existing = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ValueError(f"output_dir {output_dir} is not writable ({existing} is read-only)")
    return recorded if entries and resume else None


def record_run(output_dir: str | Path, settings: dict[str, Any], previous: dict[str, Any] | None = None,
               at_step: int | None = None) -> None:
    """Writes ``settings`` to ``output_dir/sinklora_run.json`` (what ``--resume`` compares).

    Args:
        previous: the record of the run being resumed: its history of extensions is kept, and a
            change of ``max_steps`` / ``save_steps`` is added to it.
        at_step: the step the resumed run continues from.
    """
    record = dict(settings)
    history = list((previous or {}).get(EXTENSIONS_KEY, []))
    changed = {key: {"from": previous.get(key), "to": settings.get(key)}
               for key in ("max_steps", "save_steps") if previous is not None and previous.get(key) != settings.get(key)}
    if changed:
        history.append({"at_step": at_step, **changed})
    if history:
        record[EXTENSIONS_KEY] = history
    write_text_atomic(Path(output_dir) / RUN_FILE, json.dumps(record, indent=2, default=str) + "\n")


def checkpoint_step(checkpoint: str | Path) -> int:
    """``global_step`` recorded in a checkpoint's ``trainer_state.json``."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` whose ``trainer_state.json`` (written last) reads;
    incomplete ones, left by a killed save, are skipped with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(((int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()),
                   reverse=True)
    for _, path in steps:
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("skipping %s: its save did not finish", path)
            continue
        return str(path)
    return None


class SaveOnInterrupt(TrainerCallback):
    """On SIGINT or SIGTERM, finish the current step, save a resumable checkpoint and stop.

    A second signal while the first is handled interrupts at once (default handlers are back).
    ``signum`` holds the signal received, if any.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()
        logger.warning("%s received: saving a checkpoint after this step (again to abort)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals stay as they are
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()


def end_process_group() -> None:
    """Destroys the ``torch.distributed`` process group ``accelerate launch`` set up, if any.

    Call it once the run's trainer is gone (after the function that held it has returned): a
    process that exits with the group alive can abort in its NCCL/Gloo teardown ("terminate called
    without an active exception"), and a DDP model that outlives this call holds the last reference
    to the group, whose Gloo destructor then runs when the model is freed without releasing the GIL
    and can deadlock with a Gloo thread still freeing the last collective's tensors (pytorch#56297).
    Freed first (``gc.collect`` breaks the trainer's reference cycles), the group goes with the
    registry's reference instead, through a binding that releases the GIL.

    Raises:
        RuntimeError: a ``DistributedDataParallel`` model is still alive (a caller still holds its trainer).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if any(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects()):
        raise RuntimeError("end_process_group() called while a DistributedDataParallel model is alive: "
                           "release the trainer first (return from the function that built it)")
    dist.destroy_process_group()
