"""``run(cfg) -> metrics``: one job in stage order, testable without Hydra.

    references  where the run writes, what it resumes and starts from   (run.references)
    plan        every size, checked, before anything heavy loads         (hydralign.plan)
    build       data -> plan refined by its count -> trainer -> policy -> frozen models -> module   (run.build)
    fit         Trainer.fit, the final step scored                       (run.fit)
    record      files in the run folder and every MLflow write           (run.record, tracking.recorder)

The references come first so a reference that matches nothing fails before the plan's MLflow run exists; the plan
before the MLflow run, so a config the strategy cannot run leaves no run behind; the MLflow run before the data, so a
job that fails while loading data is a FAILED run.
"""

from __future__ import annotations

import time
import traceback
from typing import Optional

from omegaconf import DictConfig

from hydralign.distributed.preemption import LISTENER, Preempted
from hydralign.plan.core import Plan, make_plan
from hydralign.run.build import build
from hydralign.run.fit import fit
from hydralign.run.record import record_end, record_start
from hydralign.run.references import check_resume, rank_zero, resolve_references
from hydralign.tracking.recorder import RunRecorder


def objective(metrics: dict[str, float], name: str) -> float:
    """The value a sweep optimizes; a name no run logs fails loudly with the names it did log."""
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not logged by this run; logged: {sorted(metrics)}")
    return metrics[name]


def run(cfg: DictConfig, callbacks: Optional[list] = None, started: Optional[float] = None,
        plan: Optional[Plan] = None) -> dict[str, float]:
    """Train per the config; return the final metrics (``val/*`` of the last validation, ``best/*``).
    ``callbacks`` are added to the Trainer's (tests, benchmarks); ``started`` is when the job began
    (default: now), the origin of ``time/startup_seconds`` (job start to first training step); ``plan``: the
    config's plan where the caller has made it already (the CLI checks it before importing anything heavy)."""
    started = started or time.time()
    LISTENER.forget()
    LISTENER.listen()  # a stop signal from here on ends the run at a step boundary, after a checkpoint
    try:
        return _run(cfg, callbacks, started, plan)
    finally:
        LISTENER.restore()


def _run(cfg: DictConfig, callbacks: Optional[list], started: float, plan: Optional[Plan]) -> dict[str, float]:
    refs = resolve_references(cfg)
    plan = plan if plan is not None else make_plan(cfg)
    check_resume(refs, cfg, plan)
    recorder = RunRecorder.open(cfg, plan, refs.run_dir, refs.run_id, refs.lineage, rank_zero(), refs.requeues)
    state, error = "FAIL", None
    try:
        built = build(cfg, plan, refs, recorder, list(callbacks or []), started)
        record_start(built, cfg, refs.run_dir, recorder)
        metrics, pruned_at = fit(built, refs.ckpt_path, cfg.eval.at_start, cfg.checkpoint.save_last,
                                 cfg.checkpoint.monitor)
        record_end(built, cfg, refs.run_dir, recorder, metrics, pruned_at, started)
        state = "COMPLETE" if pruned_at is None else "PRUNED"
    except Preempted:
        state = "PREEMPTED"  # KILLED in MLflow until the run continues (RUNNING again, then FINISHED)
        raise
    except BaseException as err:
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        recorder.finish(state, error)
    if pruned_at is not None:  # the sweeper records the trial as PRUNED
        raise built.pruning.pruned_error()
    return metrics
