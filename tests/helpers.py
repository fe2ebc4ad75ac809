"""Helpers tests import: compose the real config, and shrink it for CPU."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from hydralign.cli import config_dir
from hydralign.config.store import register

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
        f"data.cache_dir={tmp_path}/tokenized",  # the tokenized cache (data read from files) stays out of outputs/
    ]
    cfg = compose_cfg(base + list(overrides or []))
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    OmegaConf.set_readonly(cfg, False)
    return cfg
