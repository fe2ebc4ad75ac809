"""A 2-job sweep submitted through hydra/launcher=submitit_slurm and run for real by a fake SLURM
(tests/fake_slurm.py: sbatch runs the job array here, srun starts each job's 2 tasks 1.1 s apart): each task
becomes one rank of a 2-process DDP job from SLURM's variables, hydralign starts no ranks of its own, both
tasks of a job share its folder (the ``${now}`` sweep folder is resolved once, at submission), and MLflow has
one child run per job."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fake_slurm import install, sbatch_params
from tests.multiprocess.test_launch import TINY

pytestmark = pytest.mark.slow


def test_each_slurm_task_is_a_rank(tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, **install(tmp_path / "bin", tmp_path / "slurm"), "FAKE_SLURM_RUN": "1"}
    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "hydralign", "hardware=cpu_2proc", "hydra/launcher=submitit_slurm",
                          "-m", "lr=1e-3,2e-3", *TINY, f"logger.tracking_uri={store}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    job_log = "".join(p.read_text() for p in (tmp_path / "slurm").glob("job*.log"))
    assert out.returncode == 0, out.stderr[-3000:] + job_log[-3000:]
    params = sbatch_params(next((tmp_path / "slurm").glob("sbatch*.sh")).read_text())
    assert (params["nodes"], params["ntasks-per-node"], params["array"]) == ("1", "2", "0-1%2")
    assert "gpus-per-node" not in params  # a CPU preset asks for no GPU

    [sweep] = list((tmp_path / "outputs" / "multiruns").glob("*/*"))  # ${now} resolved once, at submission
    for job, array_task in (("0", "4242_0"), ("1", "4242_1")):
        assert (sweep / job / "metrics.json").is_file()
        assert not (sweep / job / "launch").exists()  # no ranks started by hydralign itself
        logs = [(sweep / ".submitit" / array_task / f"{array_task}_{t}_log.out").read_text() for t in (0, 1)]
        assert "rank 0 of 2 joined the job" in logs[0] and "rank 1 of 2 joined the job" in logs[1]
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("hydralign").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2  # one parent, one child per job (rank 0 only)
    assert sorted(r.data.params["lr"] for r in children) == ["0.001", "0.002"]
    assert all(r.data.params["world_size"] == "2" and r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.tags["run_dir"] for r in children) == [str(sweep / "0"), str(sweep / "1")]
