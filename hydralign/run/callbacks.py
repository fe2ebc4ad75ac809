"""Small Lightning callbacks every run gets."""

from __future__ import annotations

import time
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback


class StartupTimer(Callback):
    """Records ``time/startup_seconds``: from the job's start (Hydra handing it the config) to its
    first training step, once, at step 0, through ``record`` (the run's ``RunRecorder.log_metric``)."""

    def __init__(self, started: float, record: Callable[[str, float], None]):
        self.started, self.record, self.seconds = started, record, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.seconds is not None:
            return
        self.seconds = time.time() - self.started
        if trainer.is_global_zero:
            self.record("time/startup_seconds", self.seconds)


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
        if mask is None and "segments" in batch:  # packed rows: every token but the row-end padding
            mask = batch["segments"] >= 0
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
        """The count over every rank (a collective: every rank builds the checkpoint, rank 0 writes it)."""
        import torch
        import torch.distributed as dist

        count = self.resumed + (int(self.local) if self.local is not None else 0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.tensor([count], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                total = total.cuda()
            dist.all_reduce(total)
            count = int(total.item())
        return {"total": count}

    def load_state_dict(self, state_dict: dict) -> None:
        """Rank 0 carries the resumed total (so the sum over ranks stays right under any world size)."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        total = int(state_dict.get("total", state_dict.get("local", 0)))
        self.resumed = total if rank == 0 else 0



class StepSeeds(Callback):
    """Reseeds torch (CPU and CUDA), Python and NumPy at the start of every optimizer step from (seed, step,
    rank), so what draws randomness in training (dropout, LoRA dropout) draws the same after a resume as in
    the uninterrupted run: a restored generator state would not be enough, since data loaders and
    validation between checkpoint and step draw from the same generators. The step fixes the state."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches:  # within a step's accumulation
            return
        import random

        import numpy as np
        import torch

        seed = ((self.seed * 1_000_003 + trainer.global_step) * 4099 + trainer.global_rank) % (2 ** 63)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
