"""Helpers tests import: compose the real config, and shrink it for CPU."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from hydralign.cli import config_dir
from hydralign.config.schema import register

REPO = Path(__file__).resolve().parents[1]
CONF = Path(config_dir())


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides or []))


def tiny_cfg(tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """The default config, shrunk: small synthetic splits, a private run dir and MLflow store."""
    base = [
        "data.arithmetic.num_train=512", "data.arithmetic.num_val=64",
        "eval.num_generate=16", "eval.max_new_tokens=6", "trainer.max_steps=4", "eval.every_n_steps=2",
        "trainer.enable_progress_bar=false", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    cfg = compose_cfg(base + list(overrides or []))
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    OmegaConf.set_readonly(cfg, False)
    return cfg


class Recorder(Callback):
    """Per optimizer step: the window loss; at step 1: the gradients; at the end: the module."""

    def __init__(self):
        self.losses: list[float] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self.module = None
        self.optimizer = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.losses.append(float(module.last_window_loss))
        if not self.first_grads:
            self.first_grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
                                if p.grad is not None}

    def on_train_end(self, trainer, module):
        self.module, self.optimizer = module, trainer.optimizers[0]
