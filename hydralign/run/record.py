"""The record stage: every file a run writes into its folder (config, plan, DeepSpeed's config, metrics, the model)
and, through the run's ``RunRecorder``, everything it writes to MLflow. Rank 0 writes; a sharded model is gathered
with every rank's part."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from hydralign.checkpoints.saving import write_json
from hydralign.distributed.fsdp import whole_weights
from hydralign.distributed.strategies import DEEPSPEED_CONFIG_FILE, deepspeed_config
from hydralign.models.peft import trainable_summary
from hydralign.plan.format import format_plan
from hydralign.run.build import Built
from hydralign.run.export import export_model
from hydralign.secrets import redact
from hydralign.tracking.recorder import RunRecorder


def record_start(built: Built, cfg: DictConfig, run_dir: Path, recorder: RunRecorder) -> None:
    """Before training: the refined plan and the data's counts printed, the config and plan written and logged."""
    if not built.trainer.is_global_zero:
        return
    plan, report = built.plan, built.reference_report
    print(format_plan(plan, title=f"plan ({run_dir})"), flush=True)
    print(built.data.summary(), flush=True)
    print(f"model: {trainable_summary(built.model)}", flush=True)
    if report is not None:
        print(f"reference log-probs: {'read from' if report['hit'] else 'computed into'} {report['path']} in "
              f"{report['seconds']:.1f} s", flush=True)
    (run_dir / "config.yaml").write_text(redact(OmegaConf.to_yaml(cfg, resolve=True)))  # a URL's password: ***
    write_json(run_dir / "plan.json", plan.as_dict())
    artifacts: tuple[Path, ...] = ()
    if plan.strategy == "deepspeed":  # the config DeepSpeed runs with, as generated from the plan
        write_json(run_dir / DEEPSPEED_CONFIG_FILE, deepspeed_config(plan, cfg))
        artifacts = (run_dir / DEEPSPEED_CONFIG_FILE,)
    extra = built.data.prepared.metrics()  # the data counts, the data stage's seconds, cache hit, mixture
    if report is not None:
        extra.update({"reference/cache_hit": float(report["hit"]), "reference/precompute_seconds": report["seconds"]})
    recorder.log_start(plan, run_dir, extra, artifacts)


def record_end(built: Built, cfg: DictConfig, run_dir: Path, recorder: RunRecorder, metrics: dict[str, float],
               pruned_at: Optional[int], started: float) -> None:
    """After training: the model exported (not for a pruned trial), metrics.json, the run's time and best checkpoint."""
    trainer = built.trainer
    if cfg.checkpoint.export_hf and pruned_at is None:
        with whole_weights(built.module.model, built.plan, cfg, built.tokenizer) as exported:  # sharded: all ranks
            if trainer.is_global_zero:
                export_model(exported, built.tokenizer, run_dir, built.stop_ids, cfg)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        recorder.log_end(time.time() - started, built.best.best_model_path or None)
    trainer.strategy.barrier("run end")  # no rank leaves (and tears its connections down) before rank 0 is done
