"""One training run that records its loss curve: ``[torchrun ...] python -m tests.multiprocess.curve_job
OUT_DIR override ...``. Rank 0 writes ``OUT_DIR/curve.json``: ``{"train": {step: train/loss},
"val": {step: val/loss}, "seconds": fit wall time, "step_seconds": [wall time of each optimizer step],
"steps": optimizer steps, "sharded": names of the FSDP2-sharded models}``. Run from the repository root.
``CURVE_STOP_AT_STEP=N`` in the environment stops the run cleanly after step N (its checkpoint then holds
step N), so another run can resume it; ``CURVE_SIGKILL_AT_STEP=N`` kills every rank with SIGKILL in the middle of
step N + 1 (after its first micro-batch)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
from omegaconf import open_dict

from tests.helpers import compose_cfg


class Curve(L.Callback):
    def __init__(self) -> None:
        self.train: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self.started = self.seconds = self._last = 0.0
        self.step_seconds: list[float] = []
        self.sharded: list[str] = []

    def on_train_start(self, trainer, module) -> None:
        from hydralign.distributed.fsdp import is_sharded

        models = {"model": module.model, **module._frozen}
        self.sharded = [name for name, model in models.items() if is_sharded(model)]
        self.started = self._last = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.seconds = time.perf_counter() - self.started

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not batch["window_last"]:
            return
        if "train/loss" in trainer.callback_metrics:
            self.train[trainer.global_step] = float(trainer.callback_metrics["train/loss"])
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now

        if trainer.global_step == int(os.environ.get("CURVE_STOP_AT_STEP", "0")):
            trainer.should_stop = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        kill_at = int(os.environ.get("CURVE_SIGKILL_AT_STEP", "0"))
        if kill_at and trainer.global_step == kill_at and batch_idx % trainer.accumulate_grad_batches == 1:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # inside step kill_at + 1's accumulation, no cleanup

    def on_validation_end(self, trainer, module) -> None:
        self.val[trainer.global_step] = float(trainer.callback_metrics["val/loss"])
        self._last = time.perf_counter()  # a step's time leaves out the validation before it


def main(out: Path, overrides: list[str]) -> None:
    from hydralign.run.job import run

    cfg = compose_cfg(["logger=none", "checkpoint.export_hf=false", "trainer.enable_progress_bar=false",
                       "trainer.log_every_n_steps=1", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(out)
    curve = Curve()
    metrics = run(cfg, callbacks=[curve])
    if int(os.environ.get("RANK", "0")) == 0:  # set by torchrun
        (out / "curve.json").write_text(json.dumps({
            "train": curve.train, "val": curve.val, "seconds": curve.seconds, "step_seconds": curve.step_seconds,
            "steps": metrics["train/steps"], "sharded": curve.sharded}))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2:])
