"""The job's side of a stop signal (``hydralign.distributed.preemption``): agree, checkpoint, stop."""

from __future__ import annotations

from lightning.pytorch.callbacks import Checkpoint

from hydralign.checkpoints.saving import RollingCheckpoints
from hydralign.distributed.preemption import Preempted, Signals


class StopOnSignal(Checkpoint):
    """At every optimizer-step boundary the ranks agree, in one collective (a 2-integer all-reduce), whether any
    of them received a stop signal; if so, ``rolling`` writes this step's checkpoint (after the step's validation
    where the step has one, as every rolling checkpoint), and the next step raises ``Preempted`` on every rank
    before it starts: the step's metrics are logged, nothing after it is. A signal that arrives before the first
    step stops the run at its start, with nothing new to save. Lightning's own SIGTERM handler (a broadcast from
    inside the handler, which only the signalled rank joins, then an exception without a checkpoint) is replaced
    by ``signals.listen`` for the Trainer's lifetime. A ``Checkpoint``, listed before ``rolling``: Lightning
    runs both after the other callbacks, this one first."""

    def __init__(self, signals: Signals, rolling: RollingCheckpoints):
        self.signals, self.rolling = signals, rolling
        self.stop_step = None  # the step whose checkpoint ends the run
        self.warned = False

    def setup(self, trainer, module, stage: str) -> None:
        trainer._signal_connector.register_signal_handlers = self.signals.listen

    def on_train_start(self, trainer, module) -> None:
        if self._agree(trainer):
            raise Preempted(self.signals.names(), trainer.global_step, None, self.warned)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not batch.get("window_last", True) or self.stop_step is not None:
            return
        if self._agree(trainer):
            self.stop_step = trainer.global_step
            self.rolling.request()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.stop_step is not None and self.rolling.last_saved_step == self.stop_step:
            path = self.rolling.dir / f"step{self.stop_step:06d}.ckpt"
            raise Preempted(self.signals.names(), self.stop_step, str(path), self.warned)

    def _agree(self, trainer) -> bool:
        """Whether any rank was signalled (and whether any was warned of its time limit), the same on every rank."""
        import torch

        flags = [int(self.signals.warned), int(self.signals.terminated)]
        if trainer.world_size > 1:
            import torch.distributed as dist

            both = torch.tensor(flags, dtype=torch.int64, device=trainer.strategy.root_device)
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            flags = both.tolist()
        self.warned = bool(flags[0])
        return any(flags)
