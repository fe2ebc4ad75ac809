"""A run killed with SIGKILL mid-step and continued with ``resume=auto`` ends where an uninterrupted run
ends: the same weights and loss curve (1e-6, CPU fp32), no data replayed or skipped (the token count over
the whole run is the uninterrupted one's), one MLflow run. Also when its newest checkpoint sits exactly
at an epoch boundary of the data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMMON = ["trainer.max_steps=12", "eval.every_n_steps=4", "checkpoint.every_n_steps=4", "checkpoint.keep_last_k=2",
          "batch.effective=8", "batch.micro=4", "data.arithmetic.num_val=16", "eval.num_generate=4",
          "eval.max_new_tokens=4", "checkpoint.export_hf=false", "trainer.log_every_n_steps=2",
          "trainer.enable_progress_bar=false"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


def _history(store: str, run_dir: Path, key: str) -> dict[int, float]:
    """Step -> the value logged last for it (steps after the newest checkpoint are logged again)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    history = sorted(client.get_metric_history((run_dir / "mlflow_run_id").read_text(), key),
                     key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


# LoRA with dropout draws random masks every step: equal curves need the random states restored too.
@pytest.mark.parametrize("num_train,boundary,extra", [(96, False, []),
                                                      (32, True, ["peft=lora", "peft.r=4", "peft.dropout=0.1"])],
                         ids=["mid-epoch", "epoch-boundary-lora-dropout"])
def test_sigkill_then_resume_auto_equals_an_uninterrupted_run(tmp_path, num_train, boundary, extra):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = COMMON + extra + [f"data.arithmetic.num_train={num_train}", f"logger.tracking_uri={store}"]
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    out = _cli(["hydralign", *overrides, f"run_dir={ref_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    killed = _cli(["tests.multiprocess.killed_job", "6", str(run_dir), *overrides], tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step000004.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 0
    windows_per_epoch = num_train // 8
    assert (4 % windows_per_epoch == 0) == boundary  # step 4 ends an epoch of the data, or falls inside one

    resumed = _cli(["hydralign", *overrides, f"run_dir={run_dir}", "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step000008.ckpt", "step000012.ckpt"]  # keep_last_k=2
    assert (ckpts / "last.ckpt").resolve().name == "step000012.ckpt"

    a, b = _weights(ref_dir), _weights(run_dir)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    ref_loss, loss = _history(store, ref_dir, "train/loss"), _history(store, run_dir, "train/loss")
    assert sorted(loss) == sorted(ref_loss) == list(range(2, 13, 2))  # every 2nd step, after the resume too
    assert max(abs(loss[s] - ref_loss[s]) for s in ref_loss) < 1e-6
    assert _history(store, run_dir, "val/loss").keys() == {0, 4, 8, 12}
    tokens = _history(store, run_dir, "train/tokens_seen")
    assert tokens[12] == _history(store, ref_dir, "train/tokens_seen")[12]  # nothing replayed, nothing skipped
    assert (run_dir / "mlflow_run_id").read_text() and not list(ckpts.glob("*.tmp"))
