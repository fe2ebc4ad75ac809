"""Checkpoints: atomic writes, safe loads, the best and the rolling (step- and time-based) checkpoints,
Hugging Face export. Which checkpoint a run resumes from: ``hydralign.checkpoints.resume``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional
from weakref import proxy

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from hydralign.checkpoints import index as checkpoint_index
from hydralign.checkpoints.files import step_checkpoints
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


def checkpoint_callbacks(ccfg: Any, ckpt_dir: Path, eval_every: int, steps_per_epoch: Optional[int] = None,
                         every_n_steps: Optional[int] = None) -> tuple[ModelCheckpoint, list]:
    """(best, all callbacks). best: the top ``checkpoint.keep_best_k`` by ``checkpoint.monitor``; rolling:
    ``stepNNNNNN.ckpt`` every ``every_n_steps`` steps (the plan's: checkpoint.every_n_steps, or
    checkpoint.every_n_episodes converted; default: at each validation) and every
    ``checkpoint.every_n_minutes``, the newest ``keep_last_k`` kept, ``last.ckpt`` linking to the newest.
    Every checkpoint and every validation is recorded in ``checkpoints/index.json``."""
    best = BestCheckpoints(dirpath=ckpt_dir, filename="best-step{step:06d}", monitor=ccfg.monitor,
                           mode=ccfg.mode, save_top_k=ccfg.keep_best_k, auto_insert_metric_name=False,
                           steps_per_epoch=steps_per_epoch)
    callbacks: list = [best]
    minutes = ccfg.every_n_minutes
    # Always there: with no cadence it writes only when asked (a stop signal: hydralign.run.preemption).
    callbacks.append(RollingCheckpoints(ckpt_dir, every_n_steps or (eval_every if ccfg.save_last else None),
                                        minutes, ccfg.keep_last_k, steps_per_epoch, eval_every))
    return best, callbacks


class BestCheckpoints(ModelCheckpoint):
    """Lightning's top-K by the monitored metric, recording each validation's metrics and each kept
    checkpoint's step in ``checkpoints/index.json`` (what ``<run>:best`` and ``:step=N`` read)."""

    def __init__(self, *args: Any, steps_per_epoch: Optional[int] = None, **kwargs: Any):
        if kwargs.get("save_top_k", 1) < 1:
            raise ConfigError(f"checkpoint.keep_best_k={kwargs.get('save_top_k')}: keep at least one (>= 1)")
        super().__init__(*args, **kwargs)
        self.steps_per_epoch = steps_per_epoch

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Lightning's save, made atomic for sharded folders too: every rank writes under ``<name>.tmp``,
        then rank 0 renames it into place."""
        final = Path(filepath)
        tmp = final.with_name(final.name + ".tmp")
        if trainer.is_global_zero:
            _remove(tmp)
        trainer.strategy.barrier("best checkpoint begin")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("best checkpoint written")
        if trainer.is_global_zero:
            _move_into_place(tmp, final)
        trainer.strategy.barrier("best checkpoint done")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_validation_end(self, trainer, module) -> None:
        super().on_validation_end(trainer, module)
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        ckpt_dir = Path(self.dirpath)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint_index.record_validation(ckpt_dir, trainer.global_step, metrics)
        if self.last_model_path is None:
            return
        for path in self.best_k_models:  # the one saved now is new to the index; the others are known
            name = Path(path).name
            if name not in checkpoint_index.read(ckpt_dir)["checkpoints"] and Path(path).exists():
                checkpoint_index.record_checkpoint(ckpt_dir, name, trainer.global_step, self.steps_per_epoch,
                                                   self.monitor, self.mode)


class RollingCheckpoints(Checkpoint):
    """Full training state (weights, optimizer, scheduler, loops, callbacks) at optimizer-step boundaries,
    into ``stepNNNNNN.ckpt`` (a file, or a folder of per-rank shards under FSDP2/DeepSpeed): every
    ``every_n_steps`` steps and/or when ``every_n_minutes`` have passed since the last one. Rank 0's clock
    decides for every rank, read only every ~1% of the interval (the next step to look is chosen from the
    measured step time and sent with the decision), so the broadcast costs nothing per step. Each is written
    under ``<name>.tmp`` and renamed once every rank is done, so a name without ``.tmp`` is complete; then
    ``last.ckpt`` is re-pointed at it (a relative symlink, replaced atomically), all but the newest
    ``keep_last_k`` are deleted and the step is recorded in ``checkpoints/index.json``. At a step that is
    validated the checkpoint is written after the validation (and after the best-K checkpoint): a resume never
    skips a validation, since a run killed during one resumes from the checkpoint before it. A ``Checkpoint``:
    Lightning runs it after the other callbacks, so their state for the step is complete when it is saved."""

    def __init__(self, ckpt_dir: Path, every_n_steps: Optional[int], every_n_minutes: Optional[float],
                 keep_last_k: int, steps_per_epoch: Optional[int] = None, eval_every: Optional[int] = None):
        if keep_last_k < 1:
            raise ConfigError(f"checkpoint.keep_last_k={keep_last_k}: keep at least the newest checkpoint (>= 1)")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ConfigError(f"checkpoint.every_n_minutes={every_n_minutes} must be > 0 (null: no time-based "
                              "checkpoints)")
        self.dir, self.every_n_steps, self.keep = Path(ckpt_dir), every_n_steps, keep_last_k
        self.steps_per_epoch, self.eval_every = steps_per_epoch, eval_every
        self._after_validation: Optional[int] = None  # a step whose checkpoint waits for its validation
        self._requested = False  # write at the next step boundary, whatever the cadence (``request``)
        self.interval_s = every_n_minutes * 60.0 if every_n_minutes else None
        self.last_saved_step: Optional[int] = None
        self._clock = time.monotonic()  # when the last checkpoint was written (or training started)
        self._next_look = 0  # the step at which the clock is read next
        self._looked = (0, self._clock)  # (step, time) of the last look

    def on_train_start(self, trainer, module) -> None:
        if trainer.global_step > 0:  # resumed: the state at this step is the checkpoint it came from
            self.last_saved_step = trainer.global_step
        self._clock = time.monotonic()
        self._next_look, self._looked = trainer.global_step + 1, (trainer.global_step, self._clock)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not batch.get("window_last", True):  # mid-accumulation: not a step boundary
            return
        step = trainer.global_step
        due = (bool(self.every_n_steps) and step % self.every_n_steps == 0) or self._requested
        if self.interval_s is not None and step >= self._next_look:
            due = self._time_is_up(trainer, step) or due
        if due and self.eval_every and step % self.eval_every == 0:
            self._after_validation = step  # written once this step's validation is done: a resume never skips it
        elif due:
            self.save(trainer)

    def request(self) -> None:
        """Write this step's checkpoint (called at a step boundary, before this callback's own hook)."""
        self._requested = True

    def on_validation_end(self, trainer, module) -> None:
        if self._after_validation is not None and trainer.global_step == self._after_validation:
            self._after_validation = None
            self.save(trainer)

    def _time_is_up(self, trainer, step: int) -> bool:
        """Rank 0's decision, and the step to look again (~1% of the interval away at the measured pace)."""
        now = time.monotonic()
        seconds_per_step = (now - self._looked[1]) / max(1, step - self._looked[0])
        ahead = max(1, int(0.01 * self.interval_s / max(seconds_per_step, 1e-9)))
        decision = (now - self._clock >= self.interval_s, step + ahead)
        if trainer.world_size > 1:  # clocks differ: every rank follows rank 0, or some would wait forever
            decision = trainer.strategy.broadcast(decision)
        late, self._next_look = decision
        self._looked = (step, now)
        return late

    def save(self, trainer) -> Optional[Path]:
        """Write the current state as ``stepNNNNNN.ckpt`` (collective: every rank calls it)."""
        step = trainer.global_step
        self._requested = False
        if step == self.last_saved_step:
            return None
        final = self.dir / f"step{step:06d}.ckpt"
        tmp = final.with_name(final.name + ".tmp")
        if trainer.is_global_zero:
            self.dir.mkdir(parents=True, exist_ok=True)
            _remove(tmp)  # left by a run killed while writing
        trainer.strategy.barrier("checkpoint begin")
        trainer.save_checkpoint(tmp, weights_only=False)
        trainer.strategy.barrier("checkpoint written")  # every rank's part is on disk
        if trainer.is_global_zero:
            _move_into_place(tmp, final)  # the same step may be written again
            link = self.dir / "last.ckpt.tmp"
            _remove(link)
            os.symlink(final.name, link)
            last = self.dir / "last.ckpt"
            if last.is_dir() and not last.is_symlink():
                shutil.rmtree(last)
            os.replace(link, last)
            for old in step_checkpoints(self.dir)[:-self.keep]:
                _remove(old)
            checkpoint_index.record_checkpoint(self.dir, final.name, step, self.steps_per_epoch)
        trainer.strategy.barrier("checkpoint done")
        self.last_saved_step, self._clock = step, time.monotonic()
        return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``; an older ``final`` is moved aside first and deleted only afterwards, so a
    crash at any point leaves a complete checkpoint under one of the two names (a file is replaced atomically)."""
    old = final.with_name(final.name + ".old")
    if final.is_dir() and not final.is_symlink():
        _remove(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


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
