"""lm-eval during training: ``HarnessEvaluation`` runs the tasks of ``eval.harness`` on the in-memory policy at
``eval.harness.every`` (``end``: when training ends; ``checkpoint``: with each saved checkpoint, while it is
written, so the numbers belong to exactly its weights, including the final one ``run.fit`` saves after training;
``validation``: after each validation, the one before training and the final one included), once per optimizer
step.

Each evaluation, on global rank 0:
- metrics ``eval/<task>/<metric>[_<filter>]`` to every logger at the optimizer step (the run's MLflow run);
- lm-eval's results JSON into ``<run_dir>/harness/stepNNNNNN.json``, logged as the MLflow artifact
  ``harness/stepNNNNNN.json``; lm-eval's version and each task's sample count as params (once);
- the metrics into ``checkpoints/index.json`` at that step, beside the validation's, so
  ``init_from=<run>:best=eval/<task>/<metric>,max`` picks among the checkpoints by them;
- the newest metrics kept (``latest``): ``run.fit`` returns them with the run's metrics (``metrics.json``, a sweep's
  ``optimized_metric=eval/<task>/<metric>``).

Several ranks, the numbers always one process's: DDP and ZeRO-1/2 (every rank holds the whole model): rank 0
evaluates while the others wait at a barrier. Sharded weights (FSDP2, ZeRO-3): no rank holds the whole model; every rank runs the
same lm-eval requests in the same order on its shards, so each forward gathers one layer at a time as in training
(generation kept in step with ``synced_gpus``), and rank 0 records the results (``adapter.evaluate(synced=True)``).
The plan's memory estimate counts rank 0 during evaluation (``plan.memory_evaluation``). A long evaluation keeps
the ranks from training: raise ``hardware.dist_timeout_min`` past it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from hydralign.checkpoints import index as checkpoint_index
from hydralign.harness.adapter import HarnessSettings, evaluate, lm_eval_version, results_json, task_manager
from hydralign.harness.metrics import flatten_results, run_params
from hydralign.plan.core import Plan


class HarnessEvaluation(Callback):
    def __init__(self, settings: HarnessSettings, run_dir: Path, plan: Plan, cfg: Any):
        self.settings, self.run_dir, self.plan, self.cfg = settings, Path(run_dir), plan, cfg
        self.manager: Optional[Any] = None  # lm-eval's TaskManager, made once (rank 0)
        self.evaluated: dict[int, dict[str, float]] = {}  # optimizer step -> its metrics (rank 0)
        self.latest: dict[str, float] = {}  # the newest evaluation's metrics, for the run's returned metrics (rank 0)
        self._done: set[int] = set()  # steps evaluated, on every rank
        self._params_logged = False

    def setup(self, trainer, module, stage: str) -> None:
        """Task names are checked before training starts (an unknown one fails the run now, not at step N)."""
        if (trainer.is_global_zero or self._sharded()) and self.manager is None:
            self.manager = task_manager(self.settings)

    def on_validation_end(self, trainer, module) -> None:
        if self.settings.every == "validation" and not trainer.sanity_checking:
            self.evaluate(trainer, module)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self.settings.every == "checkpoint" and not _stopping(trainer):
            self.evaluate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        if self.settings.every == "end":
            self.evaluate(trainer, module)

    def evaluate(self, trainer, module) -> Optional[dict[str, float]]:
        """Evaluate the policy at this optimizer step (once per step; collective: every rank calls it)."""
        step = trainer.global_step
        if step in self._done:
            return self.evaluated.get(step)
        self._done.add(step)
        metrics = None
        sharded = self._sharded()  # every rank runs the same requests on the shards
        if trainer.is_global_zero or sharded:
            started = time.time()
            if self.manager is None:
                self.manager = task_manager(self.settings)
            results = evaluate(module.model, module.tokenizer, self.settings, self.manager, module.stop_token_ids,
                               synced=sharded)
            if trainer.is_global_zero:
                metrics = self._record(trainer, step, results, time.time() - started, sharded)
        if trainer.world_size > 1:
            trainer.strategy.barrier("harness evaluation")
        return metrics

    def _sharded(self) -> bool:
        """The weights are split over the ranks (FSDP2, ZeRO-3): no rank can evaluate alone. DDP and ZeRO-1/2
        ranks each hold the whole model: rank 0 evaluates, the others wait."""
        from hydralign.config.read import setting

        zero3 = self.plan.strategy == "deepspeed" and int(setting(self.cfg, "hardware.zero_stage") or 0) == 3
        return self.plan.world_size > 1 and (self.plan.strategy == "fsdp" or zero3)

    def _record(self, trainer, step: int, results: dict, seconds: float, sharded: bool) -> dict[str, float]:
        metrics = flatten_results(results)
        self.evaluated[step] = metrics
        self.latest = dict(metrics)  # Lightning's callback_metrics never hold these (logged to the loggers)
        out = self.run_dir / "harness" / f"step{step:06d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(results_json(results))
        tmp.replace(out)
        checkpoint_index.record_validation(self.run_dir / "checkpoints", step, metrics)
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "time/harness_seconds": seconds}, step=step)
        self._log_mlflow(trainer, results, out)
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in sorted(metrics.items()))
        where = f", {trainer.world_size} ranks on their shards" if sharded else ""
        print(f"lm-eval at step {step} ({seconds:.1f} s{where}): {shown}", flush=True)
        return metrics

    def _log_mlflow(self, trainer, results: dict, artifact: Path) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        from hydralign.tracking.recorder import log_params
        from hydralign.tracking.store import retry_locked

        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):
                continue
            if not self._params_logged:
                log_params(logger, run_params(results, lm_eval_version()))
            retry_locked(logger.experiment.log_artifact, logger.run_id, str(artifact), "harness")
        self._params_logged = True


def _stopping(trainer) -> bool:
    """The checkpoint is the one a stop signal asked for (``run.preemption.StopOnSignal`` set its step): the time
    left before the job is killed is for writing it, not for evaluating it."""
    return any(getattr(cb, "stop_step", None) == trainer.global_step for cb in trainer.callbacks)


def harness_callbacks(cfg: Any, plan: Plan, run_dir: Path) -> list[Callback]:
    """``[HarnessEvaluation]`` when ``eval.harness.every`` asks for evaluation during training, else ``[]``."""
    if plan.harness_every == "none":
        return []
    return [HarnessEvaluation(HarnessSettings.from_config(cfg), run_dir, plan, cfg)]
