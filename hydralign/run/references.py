"""The references stage: where the run writes and what it starts from. The resume point (``resume``: a run folder,
a checkpoint, or ``auto``) and the checkpoints that seed it (``init_from``, a distillation teacher) are resolved
first, so a reference that matches nothing fails before anything loads, listing what exists."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from hydralign.checkpoints.references import (
    REFERENCES,
    describe,
    forget,
    reference_of,
    remembered,
    resolve_reference,
)
from hydralign.checkpoints.resume import check_newest, check_resumable, resolve_resume
from hydralign.config.read import setting
from hydralign.distributed.one_answer import from_rank_zero, join_process_group
from hydralign.distributed.preemption import requeue_count
from hydralign.distributed.strategies import process_group_timeout
from hydralign.plan.core import Plan
from hydralign.run.trainer import default_run_dir


@dataclass(frozen=True)
class References:
    run_dir: Path  # where this run writes (resolved, created)
    ckpt_path: Optional[Path]  # the checkpoint a resumed run continues from
    run_id: Optional[str]  # the MLflow run a resumed run continues
    lineage: dict[str, Any] = field(default_factory=dict)  # config key -> Resolved (init_from, teacher_from)
    requeues: Optional[int] = None  # how often SLURM requeued this job (None outside SLURM)
    resume: Optional[str] = None  # what ``resume`` means for this job: the config's, or "auto" when requeued


def rank_zero() -> bool:
    """Before the Trainer exists: torchrun / SLURM export the process rank."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def resolve_references(cfg: DictConfig) -> References:
    """Rank 0 resolves; every other rank of the job takes its answer (one look at the run folders and the store
    per job: a source run writing a new checkpoint meanwhile cannot give the ranks different weights)."""
    backend = setting(cfg, "hardware.process_backend") or ("nccl" if cfg.hardware.accelerator == "gpu" else "gloo")
    join_process_group(backend, process_group_timeout(cfg).get("timeout"))
    forget()  # references resolve afresh for each run (a :last may have moved since)
    refs, memo = from_rank_zero(lambda: (_resolve_references(cfg), remembered()))
    if not rank_zero():
        refs.run_dir.mkdir(parents=True, exist_ok=True)
        remembered().update(memo)  # later look-ups (the model loader, the reference cache) see rank 0's answers
        for key, found in refs.lineage.items():
            print(f"hydralign: {key}: {describe(found)} (rank 0's answer)", flush=True)
    return refs


def _resolve_references(cfg: DictConfig) -> References:
    requeues = requeue_count()
    resume = cfg.resume
    if not resume and requeues:  # SLURM runs the job again (preempted, or its time limit): it continues itself
        resume = "auto"
        print(f"hydralign: requeued by SLURM ({requeues}x): continuing the run folder's newest checkpoint", flush=True)
    run_dir, ckpt_path = resolve_resume(resume, Path(cfg.run_dir) if cfg.run_dir else default_run_dir(),
                                        cfg.logger.tracking_uri)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if ckpt_path and id_file.is_file() else None
    return References(run_dir, ckpt_path, run_id, resolve_lineage(cfg), requeues, resume)


def check_resume(refs: References, cfg: DictConfig, plan: Plan) -> None:
    """A resumed run with another model, effective batch, ...: refused with the keys that differ."""
    if refs.ckpt_path is not None:
        check_newest(refs.ckpt_path, refs.run_dir, str(refs.resume))
        check_resumable(refs.ckpt_path, cfg, plan.strategy, plan.world_size)


def resolve_lineage(cfg: DictConfig) -> dict[str, Any]:
    """{config key: Resolved} for each reference the config sets, printed (rank 0 alone resolves them)."""
    found = {}
    for key in REFERENCES:
        ref = reference_of(cfg, key)
        if ref:
            found[key] = resolve_reference(ref, cfg.logger.tracking_uri, what=key)
            print(f"hydralign: {key}: {describe(found[key])}", flush=True)
    return found
