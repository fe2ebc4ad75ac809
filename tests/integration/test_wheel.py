"""Installed from a wheel (not the source tree), ``python -m hydralign`` still finds conf/."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_wheel_carries_conf_and_runs(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w",
                            str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    [wheel] = list((tmp_path / "dist").glob("hydralign-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hydralign/conf/config.yaml" in names and "hydralign/conf/hardware/4x8xA100.yaml" in names
    assert "hydralign/sweeps/lr_search.yaml" in names
    assert "hydra_plugins/hydralign_optuna_sweeper/_impl.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import hydralign.cli as c; print(c.__file__, c.config_dir())"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.stdout.split() == [str(site / "hydralign" / "cli.py"), str(site / "hydralign" / "conf")]
    out = subprocess.run([sys.executable, "-m", "hydralign", "hardware=8xA100", "dry_run=true"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "world_size                8" in out.stdout
    sweep = subprocess.run([sys.executable, "-m", "hydralign", "+sweeps=lr_search", "--cfg", "hydra"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert sweep.returncode == 0, sweep.stderr
    assert "OptunaSweeper" in sweep.stdout and "interval(1e-4, 1e-2)" in sweep.stdout
