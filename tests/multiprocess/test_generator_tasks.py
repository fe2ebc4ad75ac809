"""Generator processes as tasks of a torchrun or srun launch (hydralign/distributed/generator_tasks.py), for real on
CPU with the GRPO task of test_rollout_workers.py:

- a SLURM job submitted with hydra/launcher=submitit_slurm and run by the fake SLURM (tests/fake_slurm.py) as 3 srun
  tasks (hardware.devices_per_node=3, generator_devices=1): tasks 0 and 1 are the learners (a world of 2), task 2
  the generator; at max_staleness=1 every broadcast is confirmed by checksum (HYDRALIGN_VERIFY_SYNC=1), batches after
  the first are sampled one step behind, and the job ends by itself (the generator sees the learners' end);
- torchrun --nproc-per-node 2 with generator_devices=1 (1 learner + 1 generator) trains exactly as the same pair
  started by hydralign's own launcher (staleness 0: the same completions and losses, every broadcast confirmed)."""

from __future__ import annotations

import socket

import pytest

from tests.fake_slurm import install
from tests.multiprocess.test_rollout_workers import KEYS, STEPS, _run, _synced

pytestmark = pytest.mark.slow

PAIR = ["hardware=cpu_2proc", "hardware.generator_devices=1"]


def _free_port() -> int:
    """A free port p with p + 10000 free too (the rollout store's: MASTER_PORT + 10000)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


def test_three_srun_tasks_are_two_learners_and_a_generator_at_staleness_1(tmp_path):
    env = {**install(tmp_path / "bin", tmp_path / "slurm"), "FAKE_SLURM_RUN": "1",
           "MASTER_PORT": str(_free_port())}  # (else 15000 + the fake's job id, as other fake-SLURM tests use)
    try:
        run = _run(tmp_path, "job", *PAIR, "hardware.devices_per_node=3", "method.max_staleness=1",
                   f"run_dir={tmp_path / 'job'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   "hydra/launcher=submitit_slurm", "-m", env=env, cwd=tmp_path)
    except AssertionError as failed:
        logs = "".join(p.read_text()[-2000:] for p in sorted((tmp_path / "sweep").rglob("*_log.*")))
        raise AssertionError(f"{failed}\n{logs}") from None
    [task0, task1, task2] = [next((tmp_path / "sweep").rglob(f"*_{t}_log.out")).read_text() for t in range(3)]
    assert "ranks 0..1 the learners (world_size 2), rank 2 the generator processes" in task0
    assert "rank 0 of 2 joined the job" in task0 and "rank 1 of 2 joined the job" in task1
    assert "task 2 is generator 0" in task2 and "joined the job" not in task2
    assert not (tmp_path / "job" / "launch" / "config.yaml").exists()  # no process started by hydralign itself
    steps = list(range(1, STEPS + 1))
    assert [run["rollout/staleness"][s] for s in steps] == [0.0, 1.0, 1.0, 1.0]
    assert run["is/ratio_mean"][1] == pytest.approx(1.0, abs=1e-4) and abs(run["is/ratio_mean"][2] - 1.0) > 1e-4
    assert _synced(tmp_path, "job") == [0, 1, 2]  # batch t >= 1 needs version t - 1: every broadcast confirmed


def test_torchrun_one_learner_and_one_generator_train_as_the_self_launched_pair(tmp_path):
    short = [*PAIR, "trainer.max_steps=2", "eval.every_n_steps=2"]  # (two runs: kept short)
    own = _run(tmp_path, "own", *short)
    torchrun = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()))
    tasks = _run(tmp_path, "tasks", *short, f"run_dir={tmp_path / 'tasks'}", launcher=torchrun)  # (the sync log's)
    steps = [1, 2]
    assert sorted(tasks["train/loss"]) == steps
    for key in KEYS[1:]:  # the same completions
        assert [tasks[key][s] for s in steps] == [own[key][s] for s in steps], key
    for s in steps:
        assert tasks["train/loss"][s] == pytest.approx(own["train/loss"][s], abs=1e-6)
        assert tasks["rollout/staleness"][s] == 0.0
    assert _synced(tmp_path, "tasks") == _synced(tmp_path, "own") == [0, 1]
