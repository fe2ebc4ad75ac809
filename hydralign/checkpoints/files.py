"""Checkpoint file names in a run's ``checkpoints/`` folder (a leaf: the references, resume and saving code read them):
``step<N>.ckpt``, ``last.ckpt``, a sharded checkpoint's ``meta.pt``; the newest complete one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

CHECKPOINT_NAME = re.compile(r"^step(\d+)\.ckpt$")


LAST = "last.ckpt"


SHARDED_META = "meta.pt"  # Lightning's ModelParallelStrategy (FSDP2): everything but the tensors




# --- finding the checkpoint ------------------------------------------------------------------
def checkpoint_step(path: Path) -> Optional[int]:
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The complete ``stepNNNNNN.ckpt`` files or folders, oldest first. A checkpoint is written under
    ``<name>.tmp`` and renamed only once every rank has written its part, so a name without ``.tmp``
    is complete."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if checkpoint_step(p) is not None and not p.is_symlink()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run's ``checkpoints/`` folder: its newest step checkpoint, or
    ``last.ckpt`` when that is the only one (a run of an earlier version)."""
    steps = step_checkpoints(ckpt_dir)
    if steps:
        return steps[-1]
    last = ckpt_dir / LAST
    if last.is_file() or (last.is_dir() and (last / SHARDED_META).is_file()):
        return last.resolve()
    return None
