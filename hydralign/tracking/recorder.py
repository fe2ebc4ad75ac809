"""A run's MLflow writes, rank 0 only: ``RunRecorder`` (every write of one run: params, lineage tags, the data's
counts, artifacts, its end), Lightning's ``MLFlowLogger`` for the per-step metrics, the run's name and tags. The
tracking URI is always passed explicitly (never read at import)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from hydralign.plan.core import Plan
from hydralign.secrets import redact_tree
from hydralign.tracking.store import (
    SWEEP_FILE_ENV,
    artifact_location,
    config_hash,
    ensure_experiment,
    flatten,
    git_commit,
    hydra_job,
    retry_locked,
    short_override,
    tracking_uri,
)

# Set by hydralign.sweep.parent_run for the jobs of a multirun (never MLFLOW_RUN_ID: mlflow #15713).
PARENT_ENV, SWEEP_ID_ENV = "HYDRALIGN_PARENT_RUN_ID", "HYDRALIGN_SWEEP_ID"


def config_params(cfg: Any, plan: Plan) -> dict[str, str]:
    """Known before any data is read: the flattened resolved config, the batch sizes and the memory estimate."""
    params = redact_tree(flatten(OmegaConf.to_container(cfg, resolve=True)))  # a URL's password: ***
    params.update({"effective_batch": str(plan.effective_batch), "grad_accum": str(plan.grad_accum),
                   "world_size": str(plan.world_size), "micro_batch": str(plan.micro_batch)})
    if plan.memory is not None:  # the plan's per-device estimate (hydralign.plan.memory)
        params["memory_estimate_gib"] = f"{plan.memory.total_gib:.3f}"
    return params


def data_params(plan: Plan) -> dict[str, str]:
    """Known once the data is loaded (steps come from its size)."""
    return {"total_steps": str(plan.total_steps), "warmup_steps": str(plan.warmup_steps),
            "max_tokens_per_step": str(plan.max_tokens_per_step),
            "num_train_examples": str(plan.num_train_examples)}


def log_params(logger, params: dict[str, str]) -> None:
    """Log params not logged yet (a resumed run keeps its first values)."""
    from mlflow.entities import Param

    client, run_id = logger.experiment, logger.run_id
    existing = retry_locked(client.get_run, run_id).data.params
    batch = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(batch), 100):
        retry_locked(client.log_batch, run_id, params=batch[i:i + 100])


def run_identity(cfg: Any, plan: Plan, run_dir: Path) -> tuple[str, dict[str, str]]:
    """(run name, tags). A job of a sweep is named by what distinguishes it: its cell's overrides
    (``batch.effective=16 seed=0``), or an Optuna trial's number and sampled values; a single run by
    method, model and run folder. Never MLflow's random names: seeding a job seeds those too."""
    from hydralign.sweep.cells import cell_name
    from hydralign.sweep.study import job_trial

    job = hydra_job()
    if job is None:
        return cfg.logger.run_name or f"{plan.method} {plan.model} {run_dir.name}", {}
    num, overrides = job
    sweep_file = os.environ.get(SWEEP_FILE_ENV)
    info = json.loads(Path(sweep_file).read_text()) if sweep_file and Path(sweep_file).is_file() else {}
    cell = cell_name(overrides, info.get("fixed_keys", []))
    tags = {"job_num": str(num), "overrides": cell}
    trial = job_trial()
    if trial is not None and trial.number is not None:
        tags["trial_number"] = str(trial.number)
        name = f"trial {trial.number}: " + " ".join(short_override(o) for o in cell.split(" "))
    else:
        name = cell + (f" #{num}" if cell in info.get("repeated_cells", []) else "")
    return cfg.logger.run_name or name, tags


def log_lineage(logger, resolved: dict[str, Any]) -> None:
    """Which checkpoint seeded this run, as tags: ``lineage.source_run_id``, ``lineage.selector``,
    ``lineage.step``, ``lineage.metric``, ``lineage.metric_value``, ``lineage.path`` for ``init_from``
    (``lineage.teacher.*`` for a distillation teacher)."""
    from hydralign.checkpoints.references import REFERENCES, lineage_tags

    client, run_id = logger.experiment, logger.run_id
    for key, found in resolved.items():
        for tag, value in lineage_tags(found, REFERENCES[key]).items():
            retry_locked(client.set_tag, run_id, tag, value)


def finish(logger, state: str, error: Optional[str] = None) -> None:
    """Close the run: MLflow status from the trial state (COMPLETE, PRUNED, FAIL), tagged as well."""
    client, run_id = logger.experiment, logger.run_id
    retry_locked(client.set_tag, run_id, "trial_state", state)
    if error:
        retry_locked(client.set_tag, run_id, "error", error[:5000])
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "PREEMPTED": "KILLED"}.get(state, "FAILED")
    retry_locked(client.set_terminated, run_id, status)


def make_logger(cfg: Any, plan: Plan, run_dir: Path, run_id: Optional[str] = None, rank_zero: bool = True):
    """Lightning's MLFlowLogger on the explicit URI, on rank 0; None for logger=none and on every other rank (an
    MLflow client opens its store as it is made: a 32-rank job makes the round trips of one; Lightning logs from
    rank 0 alone anyway)."""
    if cfg.logger.name == "none" or not rank_zero:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    tags = {"git_commit": git_commit(), "config_hash": config_hash(resolved), "method": plan.method,
            "model": plan.model, "hardware": cfg.hardware.name, "run_dir": str(run_dir)}
    tags.update({k: str(v) for k, v in (cfg.logger.tags or {}).items()})
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags.update({"mlflow.parentRunId": parent, "sweep_id": os.environ.get(SWEEP_ID_ENV, "")})
    run_name, job_tags = run_identity(cfg, plan, run_dir)
    tags.update(job_tags)
    uri = tracking_uri(cfg.logger.tracking_uri)
    from mlflow.tracking import MlflowClient

    ensure_experiment(MlflowClient(tracking_uri=uri), uri, cfg.logger.experiment_name)
    return MLFlowLogger(experiment_name=cfg.logger.experiment_name, run_name=run_name,
                        tracking_uri=uri, tags=tags, run_id=run_id, synchronous=True,
                        artifact_location=artifact_location(uri, cfg.logger.experiment_name))


def log_run_start(logger, plan: Plan, run_dir: Path, extra_metrics: dict[str, float]) -> None:
    """After the data is loaded: the data-derived params and counts, the config and plan as artifacts."""
    from mlflow.entities import Metric

    client, run_id = logger.experiment, logger.run_id
    log_params(logger, data_params(plan))
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in extra_metrics.items()]
    if metrics:
        retry_locked(client.log_batch, run_id, metrics=metrics)
    for name in ("config.yaml", "plan.json"):
        retry_locked(client.log_artifact, run_id, str(run_dir / name))


class RunRecorder:
    """Every MLflow write of one run goes through here (Lightning's own metric logging goes through ``logger``, the
    same run). Rank 0 writes; on other ranks, and with ``logger=none``, every method does nothing."""

    def __init__(self, logger: Any, writes: bool):
        self.logger = logger  # Lightning's MLFlowLogger (the Trainer's), or None
        self.writes = logger is not None and writes

    @classmethod
    def open(cls, cfg: Any, plan: Plan, run_dir: Path, run_id: Optional[str], lineage: dict[str, Any],
             rank_zero: bool, requeues: Optional[int] = None) -> RunRecorder:
        """The run exists from here (a job that then fails while loading data is a FAILED run): its params, known
        from the config, and which checkpoints seeded it. ``run_id``: the run a resumed job continues (RUNNING
        again); ``requeues``: how often SLURM requeued the job (tag ``slurm.requeues``)."""
        recorder = cls(make_logger(cfg, plan, run_dir, run_id=run_id, rank_zero=rank_zero), rank_zero)
        if recorder.writes:
            client, opened = recorder.logger.experiment, recorder.logger.run_id
            if run_id is not None:
                retry_locked(client.update_run, opened, "RUNNING")
            if requeues is not None:
                retry_locked(client.set_tag, opened, "slurm.requeues", str(requeues))
            (run_dir / "mlflow_run_id").write_text(opened)
            log_params(recorder.logger, config_params(cfg, plan))
            log_lineage(recorder.logger, lineage)
        return recorder

    def log_start(self, plan: Plan, run_dir: Path, extra_metrics: dict[str, float], artifacts: tuple[Path, ...] = ()
                  ) -> None:
        """Once the data is loaded: its counts, the refined plan's params, config and plan (and ``artifacts``)."""
        if not self.writes:
            return
        log_run_start(self.logger, plan, run_dir, extra_metrics)
        for path in artifacts:
            retry_locked(self.logger.experiment.log_artifact, self.logger.run_id, str(path))

    def log_metric(self, name: str, value: float, step: int = 0) -> None:
        if self.writes:
            retry_locked(self.logger.experiment.log_metric, self.logger.run_id, name, value, step=step)

    def log_end(self, run_seconds: float, best_checkpoint: Optional[str]) -> None:
        if not self.writes:
            return
        client, run_id = self.logger.experiment, self.logger.run_id
        self.log_metric("time/run_seconds", run_seconds)
        if best_checkpoint:
            retry_locked(client.set_tag, run_id, "best_checkpoint", best_checkpoint)

    def finish(self, state: str, error: Optional[str] = None) -> None:
        if self.writes:
            finish(self.logger, state, error)
