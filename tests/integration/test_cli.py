"""The entry command as users type it (subprocesses, no training)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def hydralign(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hydralign", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=120)


def test_multirun_dry_run_prints_one_plan_per_job(tmp_path):
    out = hydralign("hardware=4x8xA100", "-m", "lr=1e-5,1e-4", "dry_run=true",
                    f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("== job ") == 2
    assert out.stdout.count("world_size                32") == 2
    assert "grad_accum (derived)" in out.stdout and "effective_batch           32 = 32 x 1 x 1" in out.stdout
    assert "lr / schedule             1e-05 / cosine" in out.stdout
    assert "lr / schedule             0.0001 / cosine" in out.stdout


def test_cluster_preset_on_this_machine_says_what_it_needs(tmp_path):
    out = hydralign("hardware=4x8xA100", "-m", "lr=5e-7,5e-6", f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 2
    assert "hardware=4x8xA100 needs 4 node(s) x 8 GPU(s) = world_size 32" in out.stderr
    assert "dry_run=true" in out.stderr and "Traceback" not in out.stderr


def test_config_error_exit_code_and_message(tmp_path):
    out = hydralign("hardware=8xA100", "batch.effective=100", "batch.micro=2", "dry_run=true",
                    f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    assert "batch.effective=100 is not divisible by world_size 8 x batch.micro 2 = 16" in out.stderr


def test_hydra_tools_work(tmp_path):
    job = hydralign("--cfg", "job", "experiment=deepseek_llm_7b_sft")
    assert job.returncode == 0 and "name_or_path: deepseek-ai/deepseek-llm-7b-base" in job.stdout
    assert "weight_decay: 0.1" in job.stdout and "max_epochs: 4" in job.stdout
    info = hydralign("--info", "defaults")
    assert info.returncode == 0 and "hardware/cpu" in info.stdout
    typo = hydralign("optimizer.lrr=1", "dry_run=true")
    assert typo.returncode != 0 and "lrr" in typo.stderr


def test_tab_completion_lists_group_options():
    import os
    from pathlib import Path

    script = Path(sys.executable).parent / "hydralign"  # console script installed with the package
    out = subprocess.run([str(script), "-sc", "query=bash"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COMP_LINE": "hydralign hardware="})
    assert "hardware=4x8xA100" in out.stdout.split() and "hardware=cpu_2proc" in out.stdout.split()


TINY = ["data.arithmetic.num_train=512", "data.arithmetic.num_val=64", "eval.num_generate=16",
        "eval.max_new_tokens=6"]


def test_grid_with_a_bad_cell_launches_nothing(tmp_path):
    import time

    started = time.time()
    out = hydralign("-m", "batch.effective=8", "batch.micro=2,3,4", "trainer.max_steps=2", *TINY,
                    f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert time.time() - started < 30
    assert "hydralign: 1 of 3 cells of this grid cannot run, so no job was started" in out.stderr
    assert "  batch.micro=3: batch.effective=8 is not divisible by world_size 1 x batch.micro 3" in out.stderr
    assert "Fix with one of: batch.micro=2 (grad_accum 4)" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # no MLflow parent run left behind
    assert not (tmp_path / "sweep" / "0").exists()  # and no job started


def test_unknown_card_or_option_stops_with_the_list(tmp_path):
    out = hydralign("experiment=nonexistent_card", "dry_run=true", cwd=tmp_path)
    assert out.returncode == 2
    assert "hydralign: experiment=nonexistent_card: no such card; choose one of: arithmetic_teacher_sft, deepseek_llm_67b_sft" in out.stderr
    out = hydralign("-m", "hardware=cpu,1xa100", "dry_run=true", cwd=tmp_path)
    assert out.returncode == 2 and "hardware=1xa100: no such hardware option; choose one of: 1xA100" in out.stderr
    out = hydralign("+sweeps=lr_serch", "-m", cwd=tmp_path)
    assert out.returncode == 2 and "sweeps=lr_serch: no such sweep file; choose one of:" in out.stderr


def test_optuna_direction_must_fit_the_metric(tmp_path):
    out = hydralign("-m", "hydra/sweeper=optuna", "lr=tag(log, interval(1e-4, 1e-2))", "dry_run=true", cwd=tmp_path)
    assert out.returncode == 2
    assert "hydra.sweeper.direction=minimize does not fit optimized_metric=val/exact_match: add " \
           "hydra.sweeper.direction=maximize" in out.stderr


def test_default_job_console_shows_each_line_once(tmp_path):
    out = hydralign("trainer.max_steps=4", "eval.every_n_steps=2", "trainer.log_every_n_steps=2", *TINY,
                    f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated
    text = "\n".join(lines)
    assert "== plan (" in text and "data: train 512/512 kept" in text and "[step 4] val/loss" in text
    for noise in ("Tip:", "not found. Creating it", "deprecated", "Creating initial MLflow database",
                  "Writing model shards"):
        assert noise not in text, noise
