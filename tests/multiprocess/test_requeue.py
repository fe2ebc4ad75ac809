"""Preemption and time limits on 2 CPU ranks, with real signals to real processes.

* The self-launcher (``hardware=cpu_2proc``) gets SIGTERM mid-run: it passes it on, both ranks write one checkpoint
  at the same step boundary and stop (exit 75); ``resume=auto`` ends with the uninterrupted run's weights and loss
  curve (1e-6), in one MLflow run.
* A SLURM job submitted through hydra-submitit-launcher (tests/fake_slurm.py runs it here): warned of its time
  limit (SIGUSR2, submitit's signal), it checkpoints and submitit requeues it; in its second life it is preempted
  (SIGTERM, and SLURM's requeue); the third life finishes: the uninterrupted run's weights and curve, one MLflow
  run (FINISHED) with every step once, tagged ``slurm.requeues=2``, without ``resume`` ever being set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fake_slurm import install, preempt, signal_tasks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = 24
COMMON = [f"trainer.max_steps={STEPS}", "eval.every_n_steps=6", "checkpoint.every_n_steps=2",
          "checkpoint.keep_last_k=30", "batch.effective=16", "batch.micro=2", "data.arithmetic.num_train=512",
          "data.arithmetic.num_val=16", "eval.num_generate=8", "eval.max_new_tokens=4", "checkpoint.export_hf=false",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "hardware=cpu_2proc"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name[4:10]) for p in (run_dir / "checkpoints").glob("step??????.ckpt"))


def _wait(what: str, ready, proc: subprocess.Popen, timeout: float = 600.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the job ended ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _history(store: str, run_id: str, key: str) -> dict[int, list[float]]:
    from mlflow.tracking import MlflowClient

    out: dict[int, list[float]] = {}
    for m in MlflowClient(tracking_uri=store).get_metric_history(run_id, key):
        out.setdefault(m.step, []).append(m.value)
    return out


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _same_run_as(reference: tuple[str, Path], store: str, run_dir: Path) -> str:
    """The run in ``run_dir`` ended with the reference's weights and curve, every step logged once; its run id."""
    from mlflow.tracking import MlflowClient

    ref_store, ref_dir = reference
    a, b = _weights(ref_dir), _weights(run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    ref_id = (ref_dir / "mlflow_run_id").read_text().strip()
    for key in ("train/loss", "val/loss"):
        ref, got = _history(ref_store, ref_id, key), _history(store, run_id, key)
        assert sorted(got) == sorted(ref), key
        assert all(len(v) == 1 for v in got.values()), f"{key} logged twice at a step"
        assert max(abs(got[s][0] - ref[s][0]) for s in ref) < 1e-6, key
    assert sorted(_history(store, run_id, "train/loss")) == list(range(1, STEPS + 1))
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "FINISHED"
    return run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    store = f"sqlite:///{tmp}/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "hydralign", *COMMON, f"logger.tracking_uri={store}",
                          f"run_dir={tmp}/run"], cwd=tmp, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return store, tmp / "run"


def test_sigterm_to_the_self_launcher_stops_every_rank_at_one_checkpoint(tmp_path, reference):
    store, run_dir = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run"
    cmd = [sys.executable, "-m", "hydralign", *COMMON, f"logger.tracking_uri={store}", f"run_dir={run_dir}"]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait("a first checkpoint", lambda: _steps(run_dir), job)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 75, err[-3000:]
    assert "stopped by SIGTERM at step" in err
    stopped_at = _steps(run_dir)[-1]
    assert 2 <= stopped_at < STEPS and (run_dir / "checkpoints" / "last.ckpt").resolve().name.endswith(
        f"{stopped_at:06d}.ckpt")
    assert not list((run_dir / "launch").glob("rank*.error"))

    out = subprocess.run(cmd + ["resume=auto"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _same_run_as(reference, store, run_dir)


def test_a_slurm_job_warned_then_preempted_is_requeued_and_continues_its_run(tmp_path, reference):
    from mlflow.tracking import MlflowClient

    state = tmp_path / "slurm"
    env = {**ENV, **install(tmp_path / "bin", state), "FAKE_SLURM_RUN": "1"}
    store = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / "sweep"
    job = subprocess.Popen([sys.executable, "-m", "hydralign", "hydra/launcher=submitit_slurm", "-m", "seed=0",
                            *COMMON, f"logger.tracking_uri={store}", f"hydra.sweep.dir={sweep}"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir, slurm_job = sweep / "0", "4242"  # a sweep of one job is no job array

    def tasks() -> list[str]:
        path = state / f"tasks.{slurm_job}"
        pids = path.read_text().split() if path.is_file() else []
        return pids if len(pids) == 2 else []

    first = _wait("the first life's first checkpoint", lambda: _steps(run_dir) and tasks(), job)
    signal_tasks(state, slurm_job, signal.SIGUSR2)  # the time-limit warning (sbatch --signal=USR2@120)
    second = _wait("the second life", lambda: tasks() != first and tasks(), job)
    warned_at = _steps(run_dir)[-1]
    _wait("the second life's first checkpoint", lambda: _steps(run_dir)[-1] > warned_at, job)
    preempt(state, slurm_job)
    _wait("the third life", lambda: tasks() not in ([], first, second), job)
    preempted_at = _steps(run_dir)[-1]
    _, err = job.communicate(timeout=600)
    logs = "".join(p.read_text() for p in state.glob("job*.log"))
    assert job.returncode == 0, err[-3000:] + logs[-3000:]
    assert 2 <= warned_at < preempted_at < STEPS, (warned_at, preempted_at)
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_0_log.*"))  # task 0's
    assert "stopped by SIGUSR2" in submitit_logs and "stopped by SIGTERM" in submitit_logs
    assert "Requeued job 4242" in submitit_logs  # submitit's own requeue, after the warning

    run_id = _same_run_as(reference, store, run_dir)
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("hydralign").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 1  # one run over three lives
    assert client.get_run(run_id).data.tags["slurm.requeues"] == "2"
