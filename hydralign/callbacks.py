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


class TokensSeen(Callback):
    """Logs ``train/tokens_seen``: the non-padding input tokens of every example trained on so far,
    over all devices (a DPO pair counts its chosen and rejected rows). Written with the step's other
    train metrics, so curves can be compared per token as well as per optimizer step or example.
    Counted on the device and read only when the step's metrics are logged (no sync per micro-batch)."""

    def __init__(self) -> None:
        self.local = None  # this rank's tokens since the start (a 0-d tensor on the batch's device)
        self.resumed = 0  # this rank's count saved in the checkpoint this run resumed from

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        mask = batch.get("attention_mask")
        if mask is not None:
            tokens = mask.sum()
            self.local = tokens if self.local is None else self.local + tokens
        if self.local is None or not batch.get("window_last", True) or trainer.global_step % trainer.log_every_n_steps:
            return
        count = self.local.double() + self.resumed
        if trainer.world_size > 1:
            count = trainer.strategy.reduce(count, reduce_op="sum")
        module.log("train/tokens_seen", float(count), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"local": self.resumed + (int(self.local) if self.local is not None else 0)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.resumed = int(state_dict.get("local", 0))
