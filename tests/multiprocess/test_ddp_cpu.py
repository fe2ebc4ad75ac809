"""DDP with 2 CPU processes (gloo, started by torchrun) trains exactly like one process with the same
effective batch: the loss normalization holds across devices, not only across accumulation steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COMMON = ["trainer.max_steps=10", "eval.every_n_steps=5", "batch.effective=8", "batch.micro=2",
          "data.arithmetic.num_train=512", "data.arithmetic.pad_operands=false", "eval.num_generate=16",
          "logger=none", "checkpoint.export_hf=false", "trainer.enable_progress_bar=false",
          "trainer.log_every_n_steps=1"]


def _run(tmp: Path, name: str, launcher: list[str], hardware: str) -> dict:
    out = subprocess.run([*launcher, "-m", "hydralign", f"hardware={hardware}", *COMMON,
                          f"hydra.run.dir={tmp / name}"], capture_output=True, text=True, cwd=tmp, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / name / "metrics.json").read_text())


def test_two_process_ddp_matches_one_process_started_either_way(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    ddp = _run(tmp_path, "ddp", [torchrun, "--nproc-per-node", "2"], "cpu_2proc")  # 2 x micro 2 x accum 2
    own = _run(tmp_path, "own", [sys.executable], "cpu_2proc")  # hydralign starts the 2 ranks itself
    single = _run(tmp_path, "single", [sys.executable], "cpu")  # 1 x micro 2 x accum 4
    assert ddp["train/steps"] == own["train/steps"] == single["train/steps"] == 10
    for key in ("train/loss", "val/loss"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
        assert own[key] == pytest.approx(ddp[key], abs=1e-6), key  # the same processes, however started
    launched = tmp_path / "own" / "launch"
    assert (launched / "config.yaml").is_file() and (launched / "rank1.log").is_file()
    assert not list(launched.glob("rank*.error"))


def test_pruning_under_ddp_stops_every_rank_together(tmp_path):
    import optuna

    from hydralign.sweep.study import make_storage, write_study_file

    journal = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="ddp", storage=make_storage(journal), direction="maximize")
    trial = study.ask()
    study_file = tmp_path / "study.json"
    write_study_file(study_file, {"study_name": "ddp", "storage": journal, "pruner": "threshold",
                                  "pruner_kwargs": {"lower": 0.5}, "directions": ["maximize"]})
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "HYDRALIGN_OPTUNA_STUDY": str(study_file), "HYDRALIGN_OPTUNA_TRIAL_ID": str(trial._trial_id),
           "HYDRALIGN_OPTUNA_TRIAL_NUMBER": "0"}  # how ranks started by hand name their trial
    out = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "hydralign", "hardware=cpu_2proc", *COMMON,
                          "trainer.max_steps=20", "optimized_metric=val/exact_match",
                          f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # a hang = a rank kept going
    assert "trial 0 pruned at step 5" in out.stderr, out.stderr[-3000:]
    reloaded = optuna.load_study(study_name="ddp", storage=make_storage(journal)).trials[0]
    assert reloaded.intermediate_values == {5: 0.0}  # rank 0 reported once, at the first validation
    import torch

    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5  # both ranks stopped there


def test_kto_two_processes_match_one_process(tmp_path):
    """KTO's KL estimate is summed over both ranks' shares of each step before any loss of it: 2 ranks x micro 2 x
    accumulation 2 train exactly as 1 x 2 x 4 (the estimate, and so every loss, sees the same 8 completions' twins)."""
    def kto(name: str, hardware: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "hydralign", "method=kto", f"hardware={hardware}", *COMMON,
                              "lr=3e-3", "schedule=constant", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=256",
                              "trainer.max_steps=5", "eval.every_n_steps=5",  # (later overrides win)
                              f"hydra.run.dir={tmp_path / name}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads((tmp_path / name / "metrics.json").read_text())

    two, one = kto("two", "cpu_2proc"), kto("one", "cpu")
    assert two["train/steps"] == one["train/steps"] == 5
    assert two["kl"] > 0.5  # step 5's estimate is well off its clamp at 0 (2.76 here)
    for key in ("train/loss", "kl", "rewards/chosen", "rewards/rejected"):
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
