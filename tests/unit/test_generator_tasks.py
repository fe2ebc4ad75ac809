"""Generator processes as tasks of a torchrun/srun launch (hydralign/distributed/generator_tasks.py): the last
``hardware.generator_devices`` ranks generate, the learners' variables are rewritten, every task derives the same
rollout channel; the plan allows several nodes where the generators fill whole nodes, and the machine check refuses
a launch of another size."""

from __future__ import annotations

import os

import pytest

from hydralign.distributed.generator_tasks import (
    TASKS_ENV,
    join_generator_tasks,
    rollout_port,
    split_env,
)
from hydralign.distributed.slurm import slurm_rank_env
from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from tests.helpers import compose_cfg

CHANNEL = ("HYDRALIGN_ROLLOUT_PORT", "HYDRALIGN_GENERATORS", "HYDRALIGN_LEARNERS", "MASTER_ADDR", TASKS_ENV)


def torchrun_env(rank: int, nodes: int, per_node: int, **extra: str) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % per_node), "WORLD_SIZE": str(nodes * per_node),
            "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": str(rank // per_node), "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500", "PATH": "/bin", **extra}


def test_three_srun_tasks_are_two_learners_and_a_generator():
    tasks = []
    for t in range(3):  # SLURM's variables for 3 tasks on one node, made torchrun's by join_slurm_step
        slurm = {"SLURM_PROCID": str(t), "SLURM_LOCALID": str(t), "SLURM_NODEID": "0", "SLURM_STEP_ID": "0",
                 "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": "gpu[07-08]",
                 "SLURM_STEP_TASKS_PER_NODE": "3", "SLURM_JOB_ID": "123456"}
        tasks.append(split_env({**slurm, **slurm_rank_env(slurm)}, 1))
    for rank, env in enumerate(tasks[:2]):  # learners: the world is theirs; RANK and LOCAL_RANK as they were
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == (str(rank), str(rank),
                                                                                              "2", "2")
        assert "HYDRALIGN_GENERATOR_RANK" not in env
    gen = tasks[2]
    assert gen["HYDRALIGN_GENERATOR_RANK"] == "0" and not {"RANK", "LOCAL_RANK", "WORLD_SIZE"} & set(gen)
    assert "CUDA_VISIBLE_DEVICES" not in gen  # a CPU launch
    assert {tuple(env[k] for k in CHANNEL) for env in tasks} == {("28456", "1", "2", "gpu07", "1")}
    assert tasks[0]["MASTER_PORT"] == "18456"  # (the next SLURM job id's MASTER_PORT would be 18457)


def test_eight_gpus_seven_learners_and_the_generator_picks_the_gpu_of_its_local_rank():
    envs = [split_env(torchrun_env(r, 1, 8), 1, gpu=True) for r in range(8)]
    assert [e.get("LOCAL_WORLD_SIZE") for e in envs] == ["7"] * 7 + [None]
    assert all(e["WORLD_SIZE"] == "7" and "CUDA_VISIBLE_DEVICES" not in e for e in envs[:7])  # learners see all
    assert envs[7]["CUDA_VISIBLE_DEVICES"] == "7" and envs[7]["HYDRALIGN_GENERATOR_RANK"] == "0"
    shown = split_env(torchrun_env(7, 1, 8, CUDA_VISIBLE_DEVICES="4,5,6,7,0,1,2,3"), 1, gpu=True)
    assert shown["CUDA_VISIBLE_DEVICES"] == "3"  # the one at LOCAL_RANK among those the task sees
    bound = split_env(torchrun_env(7, 1, 8, CUDA_VISIBLE_DEVICES="5"), 1, gpu=True)
    assert bound["CUDA_VISIBLE_DEVICES"] == "5"  # srun bound one GPU to the task: kept
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=7 sees CUDA_VISIBLE_DEVICES=0,1"):
        split_env(torchrun_env(7, 1, 8, CUDA_VISIBLE_DEVICES="0,1"), 1, gpu=True)


def test_several_nodes_the_generators_are_the_last_ranks():
    whole = [split_env(torchrun_env(r, 2, 4), 4, gpu=True) for r in range(8)]  # node 1: generators only
    assert [(e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"], e["GROUP_RANK"]) for e in whole[:4]] == [("4", "4", "0")] * 4
    assert [(e["HYDRALIGN_GENERATOR_RANK"], e["CUDA_VISIBLE_DEVICES"]) for e in whole[4:]] == [
        (str(g), str(g)) for g in range(4)]
    shared = [split_env(torchrun_env(r, 2, 4), 1) for r in range(8)]  # (the plan refuses it: uneven learners)
    assert [e.get("LOCAL_WORLD_SIZE") for e in shared] == ["4"] * 4 + ["3"] * 3 + [None]
    assert {e["HYDRALIGN_ROLLOUT_PORT"] for e in whole + shared} == {"39500"}


def test_refusals_and_the_port_near_the_top():
    with pytest.raises(ConfigError, match=r"leaves no learner among the launch's 2 tasks"):
        split_env(torchrun_env(0, 1, 2), 2)
    with pytest.raises(ConfigError, match=r"WORLD_SIZE, MASTER_PORT not set"):
        split_env({"RANK": "0", "LOCAL_RANK": "0"}, 1)
    assert rollout_port(29500) == 39500 and rollout_port(60000) == 50000


def test_joining_rewrites_the_environment_once_and_only_under_torchrun_or_srun(capsys):
    hw = compose_cfg(["method=grpo", "hardware=cpu_2proc", "hardware.generator_devices=1"]).hardware
    env = torchrun_env(1, 1, 2)
    assert join_generator_tasks(hw, env) == "generator" and "RANK" not in env and env[TASKS_ENV] == "1"
    assert join_generator_tasks(hw, env) == "generator"  # split already: left alone
    assert "rank 0 the learners (world_size 1), rank 1 the generator processes" in capsys.readouterr().out
    learner = torchrun_env(0, 1, 2)
    assert join_generator_tasks(hw, learner) == "learner" and learner["WORLD_SIZE"] == "1"
    assert join_generator_tasks(hw, {"PATH": "/bin"}) is None  # hydralign's own launcher starts them
    plain = compose_cfg(["method=grpo", "hardware=cpu_2proc"]).hardware
    assert join_generator_tasks(plain, torchrun_env(1, 1, 2)) is None


def test_the_plan_allows_whole_nodes_of_generators_and_refuses_nodes_shared_with_learners():
    cfg = compose_cfg(["method=grpo", "hardware=4x8xA100", "hardware.generator_devices=8", "method.prompts_per_step=48"])
    plan = make_plan(cfg)
    assert (plan.nodes, plan.devices_per_node, plan.world_size) == (3, 8, 24)  # Lightning's num_nodes x devices
    assert "ranks 0..23 learn and ranks 24..31 generate" in format_plan(plan)
    with pytest.raises(ConfigError, match=r"use whole nodes of generators \(hardware.generator_devices=8\)"):
        make_plan(compose_cfg(["method=grpo", "hardware=4x8xA100", "hardware.generator_devices=1",
                               "method.prompts_per_step=62"]))
    one = make_plan(compose_cfg(["experiment=tulu3_8b_rlvr"]))  # 7 learners + 1 generator on one node
    assert (one.nodes, one.devices_per_node) == (1, 7) and "ranks 0..6 learn and rank 7 generates" in format_plan(one)


def test_the_machine_check_wants_every_learner_and_generator_in_the_launch(monkeypatch):
    from hydralign.distributed.machine import check_generation_backend

    cfg = compose_cfg(["experiment=tulu3_8b_rlvr", "generation.backend=hf"])
    for name in ("LOCAL_RANK", "WORLD_SIZE", TASKS_ENV):
        monkeypatch.delenv(name, raising=False)
    check_generation_backend(cfg)  # hydralign's own launcher starts them
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "7")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=7 tasks.*7 learners \+ 1 generators.*--nproc-per-node 8"):
        check_generation_backend(cfg)
    monkeypatch.setenv("WORLD_SIZE", "8")
    check_generation_backend(cfg)
    assert os.environ["WORLD_SIZE"] == "8"  # checked, not rewritten (join_generator_tasks does that)


def test_learner_0s_end_reaches_the_generator_tasks_and_their_byes_come_back(monkeypatch, capsys):
    """The end of a split launch through learner 0's store: a generator that served every batch says bye at once,
    one still at work sees ``done`` and says bye; a generator that never answers costs learner 0 ``wait_s`` only."""
    import datetime
    import time

    import torch.distributed as dist

    from hydralign.distributed.generator_tasks import LearnersDone, end_generator_tasks, remember_store

    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=30), wait_for_workers=False)
    served, busy = (LearnersDone("127.0.0.1", store.port, g, poll_s=0.05, grace_s=60.0) for g in (0, 1))
    for watch in (served, busy):
        watch.thread.start()
    served.served.set()
    monkeypatch.setenv(TASKS_ENV, "2")
    remember_store(store, 2)
    started = time.perf_counter()
    end_generator_tasks(wait_s=20.0)
    assert time.perf_counter() - started < 10 and busy.seen.is_set() and not served.seen.is_set()
    busy.ended.set()  # (its loop ended on the closed channel: no forced exit)
    for watch in (served, busy):
        watch.thread.join(5.0)
        assert not watch.thread.is_alive()
    remember_store(store, 3)  # generator 2 never answers
    end_generator_tasks(wait_s=0.5)
    assert "not every generator task said bye within 0.5 s" in capsys.readouterr().err
