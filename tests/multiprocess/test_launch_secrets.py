"""A tracking URI with a password, in a job whose ranks hydralign starts: the ranks get it from their environment,
and neither the launch config nor the run's config.yaml holds it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SECRET = "s3cret-not-on-disk"


def test_launched_ranks_never_read_the_password_from_a_file(tmp_path):
    uri = f"postgresql://me:{SECRET}@db.invalid:5432/mlflow"  # logger=none: never connected to
    out = subprocess.run([sys.executable, "-m", "hydralign", "hardware=cpu_2proc", "logger=none",
                          f"logger.tracking_uri={uri}", "trainer.max_steps=2", "eval.every_n_steps=2",
                          "data.arithmetic.num_train=256", "data.arithmetic.num_val=16", "eval.num_generate=4",
                          "checkpoint.export_hf=false", "trainer.enable_progress_bar=false",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    launch = (tmp_path / "run" / "launch" / "config.yaml").read_text()
    assert "${oc.env:HYDRALIGN_TRACKING_URI}" in launch
    ours = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and ".hydra" not in p.parts]
    assert len(ours) > 3 and not [str(p) for p in ours if SECRET.encode() in p.read_bytes()]
    assert "postgresql://me:***@db.invalid:5432/mlflow" in (tmp_path / "run" / "config.yaml").read_text()
