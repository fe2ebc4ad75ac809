"""The CLI's job, killed with SIGKILL in the middle of an optimizer step: ``python -m
tests.multiprocess.killed_job STEP RUN_DIR override ...`` dies after the first micro-batch of step STEP + 1
(no cleanup, no final checkpoint, the MLflow run left RUNNING), as a preempted node would."""

from __future__ import annotations

import os
import signal
import sys

import lightning as L
from omegaconf import open_dict

from tests.helpers import compose_cfg


class SigkillMidStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not batch["window_last"]:  # inside step + 1's accumulation
            os.kill(os.getpid(), signal.SIGKILL)


def main(step: int, run_dir: str, overrides: list[str]) -> None:
    from hydralign.run.job import run

    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.run_dir = run_dir
    run(cfg, callbacks=[SigkillMidStep(step)])
    raise SystemExit("the job finished: it was meant to be killed at step " + str(step))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
