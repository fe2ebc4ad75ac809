"""Helpers tests import: compose the real config, and shrink it for CPU."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from hydralign.cli import config_dir
from hydralign.config.store import register

REPO = Path(__file__).resolve().parents[1]
CONF = Path(config_dir())
SHARED_ROOT: list[Path] = []  # set by tests/conftest.py: one folder for every test process of the session


@contextmanager
def shared(name: str) -> Iterator[Path]:
    """The folder ``name`` that every test process of this pytest session shares (pytest-xdist's workers too), held
    under a file lock while the caller builds or reads what is in it: the first process builds, the others wait for
    it and find it built (the caller checks for its own finished marker)."""
    folder = SHARED_ROOT[0] / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
