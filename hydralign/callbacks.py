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


class RngStates(Callback):
    """Saves every rank's random states (torch CPU and CUDA, Python, NumPy) in each checkpoint and restores
    them on resume, so what draws randomness after a resume (dropout, sampling) draws what the uninterrupted
    run drew. Under another world size the states cannot match rank for rank; they are left as seeded."""

    def state_dict(self) -> dict:
        import torch.distributed as dist

        mine = _rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)  # every rank builds the checkpoint; rank 0 writes it
            return {"ranks": states}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict) -> None:
        import torch.distributed as dist

        ranks = state_dict.get("ranks") or []
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if len(ranks) == world:
            _set_rng_states(ranks[dist.get_rank() if world > 1 else 0])


def _rng_states() -> dict:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
