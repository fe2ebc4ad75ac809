"""The Lightning Trainer of a run, built from the plan: sizes the plan owns are refused under ``trainer.*``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hydralign.checkpoints.saving import AtomicCheckpointIO
from hydralign.distributed.strategies import build_strategy
from hydralign.errors import ConfigError
from hydralign.plan.core import Plan

# Sizes the plan owns; setting them under trainer.* would fork the truth.
PLANNED_TRAINER_KEYS = {"accumulate_grad_batches": "batch.effective / batch.micro",
                        "devices": "hardware.devices_per_node", "num_nodes": "hardware.nodes",
                        "precision": "hardware.precision", "strategy": "hardware.strategy",
                        "accelerator": "hardware.accelerator", "val_check_interval": "eval.every_n_steps",
                        "gradient_clip_val": "optimizer.grad_clip"}


def default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise ConfigError("run_dir is not set and Hydra is not running: pass run_dir=/some/dir") from None


def build_trainer(cfg: Any, plan: Plan, run_dir: Path, logger: Any, callbacks: list):
    import lightning as L

    user = {k: v for k, v in (OmegaConf.to_container(cfg.trainer, resolve=True) or {}).items() if v is not None}
    for key, owner in PLANNED_TRAINER_KEYS.items():
        if key in user:
            raise ConfigError(f"trainer.{key} is derived by hydralign; set {owner} instead")
    for key in ("max_steps", "max_epochs"):
        user.pop(key, None)  # the plan turned them into plan.total_steps
    total_batches = plan.total_steps * plan.grad_accum
    kwargs = dict(
        accelerator=cfg.hardware.accelerator, devices=plan.devices_per_node, num_nodes=plan.nodes,
        precision=plan.precision, strategy=build_strategy(plan, cfg), max_steps=plan.total_steps,
        max_epochs=1, accumulate_grad_batches=plan.grad_accum, gradient_clip_val=cfg.optimizer.grad_clip,
        val_check_interval=min(plan.eval_every_n_steps * plan.grad_accum, total_batches),
        check_val_every_n_epoch=None, num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=logger if logger is not None else False, callbacks=callbacks, default_root_dir=str(run_dir),
        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
    )
    kwargs.update(user)
    return L.Trainer(**kwargs)
