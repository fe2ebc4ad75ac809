"""Small Lightning callbacks every run gets."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class StartupTimer(Callback):
    """Records ``time/startup_seconds``: from the job's start (Hydra handing it the config) to its
    first training step. Written once, directly, at step 0."""

    def __init__(self, started: float):
        self.started, self.seconds = started, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.seconds is not None:
            return
        self.seconds = time.time() - self.started
        logger = trainer.logger
        if trainer.is_global_zero and logger is not None and hasattr(logger, "run_id"):
            from hydralign.tracking import retry_locked

            retry_locked(logger.experiment.log_metric, logger.run_id, "time/startup_seconds", self.seconds, step=0)
