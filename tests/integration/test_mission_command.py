"""The mission's own command, verbatim: on a machine without the GPUs it says what it would need, fast;
with dry_run=true it prints one DPO plan per job."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.helpers import REPO

MISSION = ["method=dpo", "hardware=4x8xA100", "-m", "lr=5e-7,5e-6"]


def hydralign(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "hydralign", *args], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    return out, time.time() - started


def test_mission_command_says_what_it_needs(tmp_path):
    out, seconds = hydralign(*MISSION, f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 2, out.stderr
    assert "hardware=4x8xA100 needs 4 node(s) x 8 GPU(s) = world_size 32" in out.stderr
    assert "Traceback" not in out.stderr and seconds < 30  # a couple of seconds here; no model or data loaded
    assert not (tmp_path / "sweep" / "0" / "config.yaml").exists()  # no job started


def test_mission_command_dry_run_prints_two_dpo_plans(tmp_path):
    out, _ = hydralign(*MISSION, "dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("== job ") == 2
    assert out.stdout.count("method / model            dpo / tiny") == 2
    assert out.stdout.count("world_size                32") == 2
    assert out.stdout.count("loss normalized by        pairs of the whole step") == 2
    assert "lr / schedule             5e-07 / cosine" in out.stdout
    assert "lr / schedule             5e-06 / cosine" in out.stdout
