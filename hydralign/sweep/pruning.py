"""Step-based Optuna pruning for a sweep's job: report the objective at every validation, let the
study's pruner decide on rank 0, and stop every rank together."""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import Callback

from hydralign.sweep.study import TrialRef, job_trial


class OptunaPruning(Callback):
    def __init__(self, trial_ref: TrialRef, monitor: str):
        self.trial_ref, self.monitor = trial_ref, monitor
        self.trial = None
        self.pruned_at: Optional[int] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.trial = self.trial_ref.load()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return  # the step-0 score before training is not a pruning point
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise KeyError(f"optimized_metric={self.monitor} was not logged at validation; logged: "
                               f"{sorted(trainer.callback_metrics)}")
            self.trial.report(float(value), step=trainer.global_step)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = trainer.global_step
            trainer.should_stop = True

    def pruned_error(self) -> Exception:
        """What the job raises once pruned: the sweeper records the trial as PRUNED."""
        import optuna

        return optuna.TrialPruned(f"trial {self.trial_ref.number} pruned at step {self.pruned_at}")


def pruning_callback(monitor: Optional[str]) -> Optional[OptunaPruning]:
    """The callback for a job of an Optuna sweep (single objective); None otherwise."""
    ref = job_trial()
    if ref is None or not isinstance(monitor, str) or ref.multi_objective():
        return None  # Optuna prunes single-objective studies only
    return OptunaPruning(ref, monitor)
