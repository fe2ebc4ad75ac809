"""The early-vs-final grid end to end at tiny scale: an SFT run whose checkpoints are indexed, then
``+sweeps=sft_ckpt_early_vs_final`` as one command (here 2 cells x 1 seed: distillation from the SFT run's
:best and from its :last checkpoint), each job tagged with the checkpoint it started from, and the report
with one row per cell; every student (and each SFT checkpoint) also scored downstream through lm-eval."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow

SMALL = ["data.arithmetic.num_val=32", "eval.num_generate=8", "eval.max_new_tokens=4",
         "trainer.enable_progress_bar=false", "eval.harness.limit=16"]  # lm-eval: 16 of the 200 held-out sums
EVAL = "eval/hydralign_arithmetic_teacher/exact_match"  # the sweep's (and the SFT card's) downstream metric


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=900,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_early_vs_final_sweep_runs_and_reports(tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    sft = tmp_path / "sft"
    _cli(["hydralign", "experiment=arithmetic_teacher_sft", "trainer.max_steps=30", "eval.every_n_steps=10",
          "checkpoint.every_n_steps=10", *SMALL, f"logger.tracking_uri={store}", f"run_dir={sft}"], tmp_path)

    sweep = tmp_path / "sweep"
    _cli(["hydralign", "+sweeps=sft_ckpt_early_vs_final", "-m", f"refs.sft={sft}", "+sweeps/early_vs_final=distill",
          "refs.start=best,last", "seed=0", "trainer.max_steps=6", "eval.every_n_steps=3", *SMALL,
          f"logger.tracking_uri={store}", f"hydra.sweep.dir={sweep}"], tmp_path)

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("hydralign").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    tags = {r.data.params["refs.start"]: r.data.tags for r in children}
    assert tags["best"]["lineage.teacher.selector"] == "best" and tags["last"]["lineage.teacher.selector"] == "last"
    assert tags["last"]["lineage.teacher.step"] == "30"  # the final checkpoint of the 30-step SFT run
    assert tags["best"]["lineage.teacher.metric"] == "val/loss"
    assert tags["best"]["lineage.teacher.source_run_id"] == (sft / "mlflow_run_id").read_text()
    # every student evaluated downstream once, at its last step (eval.harness.every=end), on 16 sums
    for child in children:
        history = client.get_metric_history(child.info.run_id, EVAL)
        assert [m.step for m in history] == [6] and 0.0 <= history[0].value <= 1.0, history
        assert child.data.params["harness.n_samples.hydralign_arithmetic_teacher"] == "16"
    # the SFT card evaluates each of its checkpoints (eval.harness.every=checkpoint)
    sft_history = client.get_metric_history((sft / "mlflow_run_id").read_text(), EVAL)
    assert [m.step for m in sft_history] == [10, 20, 30], sft_history

    out = _cli(["hydralign.report", str(sweep), "--metrics", f"val/distill/nll,val/loss,{EVAL}"], tmp_path)
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert sorted(r["refs.start"] for r in rows) == ["best", "last"], out.stdout
    assert all(float(r["val/distill/nll mean"]) > 0 and float(r["val/loss mean"]) > 0 for r in rows)
    assert all(0.0 <= float(r[f"{EVAL} mean"]) <= 1.0 for r in rows), rows

    # the MiniLLM card's embedded twin, from the same SFT run's :best checkpoint, a few steps
    twin = tmp_path / "minillm"
    _cli(["hydralign", "experiment=minillm_arithmetic_tiny", f"method.teacher_from={sft}:best", "trainer.max_steps=4",
          "eval.every_n_steps=2", "batch.effective=8", "method.max_new_tokens=4", *SMALL, "logger=none",
          f"run_dir={twin}"], tmp_path)
    metrics = json.loads((twin / "metrics.json").read_text())
    assert metrics["train/steps"] == 4 and math.isfinite(metrics["val/distill/nll"])
