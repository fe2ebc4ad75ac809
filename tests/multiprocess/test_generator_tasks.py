"""Generator processes as tasks of a torchrun or srun launch (hydralign/distributed/generator_tasks.py), for real on
CPU with the GRPO task of test_rollout_workers.py:

- a SLURM job submitted with hydra/launcher=submitit_slurm and run by the fake SLURM (tests/fake_slurm.py) as 3 srun
  tasks (hardware.devices_per_node=3, generator_devices=1): tasks 0 and 1 are the learners (a world of 2), task 2
  the generator; at max_staleness=1 every broadcast is confirmed by checksum (HYDRALIGN_VERIFY_SYNC=1), batches after
  the first are sampled one step behind, and the job ends by itself (the generator sees the learners' end);
- torchrun --nproc-per-node 2 with generator_devices=1 (1 learner + 1 generator) trains as the same pair started by
  hydralign's own launcher does (staleness 0: the single-process run's completions and losses, every broadcast
  confirmed);
- the end without a supervisor, over a real channel (no model): a generator task waiting for weights exits 0 once
  learner 0 said done and left, also when learner 0's run ended before it opened the channel, and fails when learner
  0 vanished without a word."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.fake_slurm import install
from tests.multiprocess.test_rollout_workers import KEYS, REPO, STEPS, _run, _synced

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
    """Against test_rollout_workers' reference, the single-process run, which the self-launched pair reproduces
    (the same completions, losses to 1e-5: test_staleness_0_reproduces_the_single_process_run...): one process to
    start instead of three keeps this test short."""
    short = ["trainer.max_steps=2", "eval.every_n_steps=2"]
    single = _run(tmp_path, "single", "hardware=cpu", *short)
    torchrun = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()))
    tasks = _run(tmp_path, "tasks", *PAIR, *short, f"run_dir={tmp_path / 'tasks'}", launcher=torchrun)
    steps = [1, 2]
    assert sorted(tasks["train/loss"]) == steps
    for key in KEYS[1:]:  # the same completions
        assert [tasks[key][s] for s in steps] == [single[key][s] for s in steps], key
    for s in steps:
        assert tasks["train/loss"][s] == pytest.approx(single["train/loss"][s], abs=1e-5)
        assert tasks["rollout/staleness"][s] == 0.0 and tasks["is/ratio_mean"][s] == pytest.approx(1.0, abs=1e-5)
    assert _synced(tmp_path, "tasks") == [0, 1]  # version 0, then after step 1: each confirmed by checksum


LEARNER = """
import os, sys, time
from hydralign.distributed.generator_tasks import end_generator_tasks, remember_store
from hydralign.rollout_workers.channel import Channel
if sys.argv[1] == "early":  # the run failed while loading, before the channel (submitit: the task exits 0)
    time.sleep(1.0)
    end_generator_tasks()
    sys.exit(0)
channel = Channel.open(learner_rank=0, timeout_s=60)
remember_store(channel.store, 1)
time.sleep(1.0)  # the generator is waiting in the weight broadcast by now
if sys.argv[1] == "vanish":
    os._exit(1)  # killed: no word to the generators
end_generator_tasks()
"""
GENERATOR = """
import hydralign.rollout_workers.generator as generator
from hydralign.distributed.generator_tasks import serve_task
from hydralign.rollout_workers.channel import Channel

def waits_for_weights(cfg):  # the generator loop's first wait, without a model (this tests the end only)
    Channel.open(None, timeout_s=60).recv_weights([])

generator.serve = waits_for_weights
serve_task(None)
"""


@pytest.mark.parametrize("how", ["done", "early", "vanish"])
def test_a_generator_task_ends_with_the_learners_and_fails_without_them(tmp_path, how):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "HYDRALIGN_ROLLOUT_PORT": str(port),
           "RANK": "0",
           "HYDRALIGN_GENERATORS": "1", "HYDRALIGN_LEARNERS": "1", "HYDRALIGN_GENERATOR_TASKS": "1"}
    gen = subprocess.Popen([sys.executable, "-c", GENERATOR], env={**env, "HYDRALIGN_GENERATOR_RANK": "0", "RANK": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    learner = subprocess.run([sys.executable, "-c", LEARNER, how], env=env, capture_output=True, text=True, timeout=60)
    out, _ = gen.communicate(timeout=60)
    if how != "vanish":
        assert learner.returncode == 0, learner.stderr[-2000:]
        assert gen.returncode == 0, out[-2000:]
        assert "generator 0: the learners are done" in out
    else:
        assert learner.returncode == 1 and gen.returncode != 0 and "Connection closed by peer" in out, out[-2000:]
