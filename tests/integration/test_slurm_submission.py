"""The mission command submitted to SLURM from a login node without GPUs, against a fake ``sbatch``
(tests/fake_slurm.py) that records the submission script: what the script asks for, and what each job
will run (its config, rebuilt from the submitted pickle as the SLURM task does). A dry run prints the plans
and submits nothing; without -m the launcher is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fake_slurm import install, sbatch_params
from tests.helpers import REPO

MISSION = ["method=dpo", "hardware=4x8xA100", "hydra/launcher=submitit_slurm", "-m", "lr=5e-7,5e-6"]


def slurm_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **install(tmp_path / "bin", tmp_path / "slurm"), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("FAKE_SLURM_RUN", None)
    return env


def rebuilt_job_config(pickle: Path):
    """The config a SLURM task composes from its submitted pickle (hydra-submitit-launcher's ``__call__``)."""
    from hydra.core.singleton import Singleton
    from submitit.core.utils import DelayedSubmission

    delayed = DelayedSubmission.load(pickle)
    launcher, (overrides, _, num, _, state) = delayed.function, delayed.args
    saved = Singleton.get_state()
    try:
        Singleton.set_state(state)
        return num, launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    finally:
        Singleton.set_state(saved)


def test_mission_command_is_submitted_from_a_login_node_without_gpus(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "hydralign", *MISSION, f"hydra.sweep.dir={sweep}",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=slurm_env(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:  # submitted once sbatch ran and submitit moved each job's pickle into place
            deadline = time.time() + 120
            while len(list(sweep.glob(".submitit/*/*_submitted.pkl"))) < 2 and proc.poll() is None:
                assert time.time() < deadline, "no submission within 120 s"
                time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # it would wait for the jobs' results
            proc.wait()
    log = (tmp_path / "out.txt").read_text()
    assert "visible GPU" not in log and "Traceback" not in log, log
    scripts = sorted((tmp_path / "slurm").glob("sbatch*.sh"))
    assert len(scripts) == 1, log  # one job array of two jobs
    script = scripts[0].read_text()
    params = sbatch_params(script)
    assert {k: params[k] for k in ("nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "time",
                                   "array", "job-name")} == {
        "nodes": "4", "ntasks-per-node": "8", "gpus-per-node": "8", "cpus-per-task": "8", "time": "1440",
        "array": "0-1%2", "job-name": "hydralign"}
    lines = script.splitlines()
    srun = [i for i, line in enumerate(lines) if line.startswith("srun ")]
    assert len(srun) == 1 and f"{sys.executable} -u -m submitit.core._submit" in lines[srun[0]]  # each task a rank
    assert lines.index("export SLURM_KILL_BAD_EXIT=1") < srun[0]  # a failing task ends the others

    jobs = dict(rebuilt_job_config(p) for p in sweep.glob(".submitit/*/*_submitted.pkl"))
    assert sorted(jobs) == [0, 1]
    assert [jobs[n].lr for n in (0, 1)] == [5e-7, 5e-6] and jobs[0].method.name == "dpo"
    hw = jobs[0].hardware
    assert (hw.nodes, hw.devices_per_node, hw.dist_timeout_min) == (4, 8, 30)
    assert hw.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and hw.env["TORCH_NCCL_BLOCKING_WAIT"] == "0"


def test_dry_run_prints_each_plan_and_submits_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hydralign", *MISSION, "dry_run=true",
                          f"hydra.sweep.dir={tmp_path}/sweep"], cwd=REPO, env=slurm_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("== job ") == 2 and out.stdout.count("world_size                32") == 2
    assert ("dry run: nothing submitted; hydra/launcher=submitit_slurm would submit 2 SLURM job(s), each asking "
            "for 4 node(s) x 8 task(s), 8 GPU(s) per node, 8 CPU(s) per task, time limit 1440 min") in out.stdout
    assert not list((tmp_path / "slurm").glob("sbatch*")) and not (tmp_path / "sweep" / ".submitit").exists()


def test_the_slurm_launcher_without_multirun_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hydralign", "hydra/launcher=submitit_slurm",
                          f"hydra.run.dir={tmp_path}/run"], cwd=REPO, env=slurm_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "hydra/launcher=submitit_slurm submits the jobs of a multirun only: add -m" in out.stderr
