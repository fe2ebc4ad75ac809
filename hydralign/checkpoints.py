"""Checkpoints: atomic writes, safe loads, last / best / every-N callbacks, Hugging Face export, resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from hydralign.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<name>.tmp`` then rename: a crash mid-write never leaves a truncated checkpoint.
    Loads with ``weights_only=True`` (tensors and plain containers only)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def checkpoint_callbacks(ccfg: Any, ckpt_dir: Path, eval_every: int) -> tuple[ModelCheckpoint, list]:
    """(best, all callbacks). best: top-1 by ``checkpoint.monitor``; last: refreshed at every validation
    and at the end; intermediate: every ``checkpoint.every_n_steps`` steps, newest ``keep_last_k`` kept."""
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-step{step:06d}", monitor=ccfg.monitor,
                           mode=ccfg.mode, save_top_k=1, auto_insert_metric_name=False)
    callbacks: list = [best]
    if ccfg.save_last:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                         every_n_train_steps=ccfg.every_n_steps or eval_every))
    if ccfg.every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:06d}", monitor="step",
                                         mode="max", save_top_k=ccfg.keep_last_k,
                                         every_n_train_steps=ccfg.every_n_steps, auto_insert_metric_name=False))
    return best, callbacks


def resolve_resume(resume: Optional[str], run_dir: Path) -> tuple[Path, Optional[Path]]:
    """``resume``: a run directory (continue it in place), a .ckpt file, or "auto" (this run_dir's
    last.ckpt if present). Returns (run directory to write into, checkpoint to restore)."""
    if not resume:
        return run_dir, None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return run_dir, last if last.is_file() else None
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"resume={resume}: {last} does not exist; nothing to resume from")
        return path, last
    if path.is_file() and path.suffix == ".ckpt":
        run = path.parent.parent if path.parent.name == "checkpoints" else run_dir
        return run, path
    raise ConfigError(f"resume={resume} is neither a run directory nor a .ckpt file")


def export_hf(model: torch.nn.Module, tokenizer: Any, out_dir: Path, stop_token_ids: list[int]) -> Path:
    """save_pretrained (safetensors) + tokenizer, written beside and renamed into place."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.eos_token_id = stop_token_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
