"""The fit stage: an optional validation at step 0, Trainer.fit (resumed from a checkpoint where one was found),
the final step always scored, and the metrics the run returns."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hydralign.checkpoints.saving import RollingCheckpoints
from hydralign.harness.callback import HarnessEvaluation
from hydralign.run.build import Built


def fit(built: Built, ckpt_path: Optional[Path], validate_first: bool, save_last: bool, monitor: str
        ) -> tuple[dict[str, float], Optional[int]]:
    """(metrics: ``val/*`` of the last validation, the method's own, ``best/<monitor>``, ``train/steps``, lm-eval's
    ``eval/*`` of the newest harness evaluation; the step a sweep's pruner stopped the run at, or None)."""
    trainer, module, data = built.trainer, built.module, built.data
    if validate_first and ckpt_path is None:
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    pruned_at = built.pruning.pruned_at if built.pruning else None
    if module.last_val_step != trainer.global_step and pruned_at is None:
        trainer.validate(module, datamodule=data, verbose=False)  # the final step is always scored
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "step"}
    if built.best.best_model_score is not None:
        metrics[f"best/{monitor}"] = float(built.best.best_model_score)
    metrics["train/steps"] = float(trainer.global_step)
    rolling = next((c for c in built.checkpoints if isinstance(c, RollingCheckpoints)), None)
    if rolling is not None and save_last:  # the final state, if the cadence missed it
        rolling.save(trainer)  # (eval.harness.every=checkpoint evaluates it here)
    for harness in (c for c in trainer.callbacks if isinstance(c, HarnessEvaluation)):
        metrics.update(harness.latest)  # logged to the loggers directly: never in callback_metrics
    return metrics, pruned_at
