"""hydralign starts its own ranks: a multirun of 2-process jobs (one MLflow run and one folder per
job, no rank re-running the sweep), and a failing rank ends its job with that rank's own error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydralign.distributed.launch import RankFailed, rank_env, supervise

pytestmark = pytest.mark.slow

TINY = ["trainer.max_steps=4", "eval.every_n_steps=2", "batch.effective=8", "batch.micro=2",
        "data.arithmetic.num_train=256", "data.arithmetic.num_val=16", "eval.num_generate=8",
        "eval.max_new_tokens=4", "checkpoint.export_hf=false", "trainer.enable_progress_bar=false"]


def test_multirun_of_two_process_jobs(tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "hydralign", "hardware=cpu_2proc", "-m", "lr=1e-3,2e-3", *TINY,
                          f"logger.tracking_uri={store}", f"hydra.sweep.dir={tmp_path}/sweep"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]  # no extra sweep started by a rank
    for job in jobs:
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()
        assert (tmp_path / "sweep" / job / "launch" / "rank1.log").is_file()
    assert not list((tmp_path / "sweep").glob("*/*/multirun.yaml"))
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("hydralign").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2  # one parent, one child per job (rank 0 only)
    assert sorted(r.data.params["lr"] for r in children) == ["0.001", "0.002"]
    assert sorted(r.info.run_name for r in children) == ["lr=0.001", "lr=0.002"]
    assert all(r.data.params["world_size"] == "2" and r.info.status == "FINISHED" for r in children)


SCRIPT = """
import os, pathlib, sys, time
if os.environ["RANK"] == "1":
    pathlib.Path(sys.argv[1], "rank1.error").write_text("ValueError: bad shard 7")
    sys.exit(1)
time.sleep(60)
"""


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path)]
    started = time.time()
    with pytest.raises(RankFailed, match=r"rank 1 of 2 failed: ValueError: bad shard 7"):
        supervise([cmd, cmd], [rank_env(r, 2, 29555, {}) for r in range(2)], tmp_path, grace_s=5)
    assert time.time() - started < 30  # rank 0 was stopped, not waited for
    assert Path(tmp_path, "rank1.log").is_file()


def test_generator_processes_are_stopped_when_the_ranks_are_done_and_fail_the_job_when_they_fail(tmp_path):
    """supervise(helpers=1): the last process serves the others (a generator process). The ranks ending well end the
    job well, the helper still running is stopped; a helper that fails first ends the job with its error."""
    import os

    rank = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    serving = [sys.executable, "-c", "import time; time.sleep(60)"]
    env = dict(os.environ)
    started = time.time()
    supervise([rank, serving], [env, env], tmp_path, grace_s=5, helpers=1)
    assert time.time() - started < 20  # not waited for
    failing = [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1], 'rank1.error').write_text("
               "'generator 0: RuntimeError: engine broke'); sys.exit(1)", str(tmp_path)]
    with pytest.raises(RankFailed, match=r"rank 1 of 2 failed: generator 0: RuntimeError: engine broke"):
        supervise([serving, failing], [env, env], tmp_path, grace_s=5, helpers=1)


def test_a_generator_losing_its_learners_at_a_stop_does_not_fail_the_job(tmp_path):
    """Preempted learners end one after the other; learner 0 took the rollout store with it, so the generator fails
    on a closed connection while learner 1 still writes its checkpoint. That is the job stopping, not failing:
    Preempted (to be requeued), and learner 1 is not cut short by SIGHUP."""
    import os

    from hydralign.distributed.preemption import Preempted

    first = [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(75)"]
    second = [sys.executable, "-c", "import pathlib, sys, time; time.sleep(2.0); "
              "pathlib.Path(sys.argv[1], 'learner1.done').write_text('checkpoint written'); sys.exit(75)", str(tmp_path)]
    generator = [sys.executable, "-c", "import pathlib, sys, time; time.sleep(0.8); pathlib.Path(sys.argv[1], "
                 "'rank2.error').write_text('generator 0: ConnectionResetError'); sys.exit(1)", str(tmp_path)]
    env = dict(os.environ)
    with pytest.raises(Preempted):
        supervise([first, second, generator], [env, env, env], tmp_path, grace_s=5, helpers=1)
    assert (tmp_path / "learner1.done").is_file()
