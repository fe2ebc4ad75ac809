"""SLURM through Hydra's submitit launcher (hydralign/distributed/slurm.py, conf/hydra/launcher/submitit_slurm.yaml): the
launcher's resources come from the hardware preset, the login node checks the grid without needing GPUs, a
SLURM task's variables map to torchrun's, and the job prelude joins the step and sets the NCCL environment
before training. The submission itself (sbatch script) is tested in tests/integration/test_slurm_submission.py."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from hydralign.config.store import register
from hydralign.distributed import machine as hardware
from hydralign.distributed.slurm import (
    SLURM_LAUNCHER,
    first_host,
    requested,
    resource_problem,
    slurm_rank_env,
    step_tasks,
    submits_to_slurm,
    tasks_on_node,
)
from hydralign.errors import ConfigError
from tests.helpers import CONF

GPU_PRESETS = ["1xV100", "1xA100", "8xA100", "8xH100", "4x8xA100"]
MISSION = ["method=dpo", "hardware=4x8xA100", "hydra/launcher=submitit_slurm"]


def multirun_config(overrides: list[str], task: list[str] | None = None, fn=None):
    """The multirun config of ``python -m hydralign <overrides> -m <task>``; ``fn(config)`` runs while Hydra
    is initialized (the grid check needs its config loader)."""
    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = list(overrides) + list(task or [])
        return fn(cfg) if fn else cfg


@pytest.fixture
def environ():
    """os.environ, restored whole after the test (code under test adds RANK, MASTER_ADDR, NCCL variables)."""
    saved = dict(os.environ)
    for name in [k for k in os.environ if k.startswith(("SLURM_", "TORCH_NCCL", "NCCL_", "TORCH_FR"))] + [
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "GROUP_RANK", "NODE_RANK"]:
        os.environ.pop(name, None)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


# --- the launcher's resources ----------------------------------------------------------------------
def test_mission_command_asks_slurm_for_the_presets_job():
    cfg = multirun_config(MISSION)
    launcher = cfg.hydra.launcher
    # conf/hydra/launcher/submitit_slurm.yaml won over the plugin's own option of that name, and extends it
    assert launcher._target_ == SLURM_LAUNCHER and submits_to_slurm(cfg)
    assert type(OmegaConf.to_object(launcher)).__name__ == "SlurmQueueConf"
    assert requested(cfg) == {"nodes": 4, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8,
                              "timeout_min": 1440, "partition": None}
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout == 20  # warned 120 s ahead; 20 time limits


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_every_gpu_preset_asks_for_one_task_per_gpu(preset):
    cfg = multirun_config([f"hardware={preset}", "hydra/launcher=submitit_slurm"])
    asked, hw = requested(cfg), cfg.hardware
    assert (asked["nodes"], asked["tasks_per_node"], asked["gpus_per_node"]) == (
        hw.nodes, hw.devices_per_node, hw.devices_per_node)
    assert asked["timeout_min"] == hw.slurm_time_min > 0 and resource_problem(asked, hw) is None


def test_overrides_reach_the_launcher():
    cfg = multirun_config(MISSION + ["hardware.slurm_time_min=90", "hardware.nodes=2",
                                     "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=400"])
    assert requested(cfg)["timeout_min"] == 90 and requested(cfg)["nodes"] == 2
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.mem_gb == 400
    cpu = multirun_config(["hardware=cpu_2proc", "hydra/launcher=submitit_slurm"])
    assert requested(cpu)["gpus_per_node"] is None and requested(cpu)["tasks_per_node"] == 2
    assert not submits_to_slurm(multirun_config(["hardware=4x8xA100"]))  # the basic launcher


def test_a_launcher_that_disagrees_with_the_preset_is_refused():
    cfg = multirun_config(MISSION + ["hydra.launcher.tasks_per_node=1", "hydra.launcher.gpus_per_node=4"])
    problem = resource_problem(requested(cfg), cfg.hardware)
    assert "hardware=4x8xA100 runs one rank per device on 4 node(s) x 8 GPU(s)" in problem
    assert "hydra.launcher.tasks_per_node=8, hydra.launcher.gpus_per_node=8" in problem


# --- the grid check on the login node --------------------------------------------------------------
def test_login_node_without_gpus_plans_the_grid_but_leaves_the_machine_to_the_tasks(monkeypatch):
    from hydralign.sweep.grid_check import bad_cells

    monkeypatch.setattr(hardware, "visible_gpus", lambda: 0)
    assert multirun_config(MISSION, ["lr=5e-7,5e-6"], bad_cells) == (2, [])
    total, bad = multirun_config(MISSION[:2], ["lr=5e-7,5e-6"], bad_cells)  # no SLURM: this machine must run it
    assert total == 2 and len(bad) == 2 and "0 visible GPU(s)" in bad[0][1]
    total, bad = multirun_config(MISSION, ["batch.effective=128", "batch.micro=3,2"], bad_cells)  # still planned
    assert [name for name, _ in bad] == ["batch.micro=3"] and "not divisible by world_size 32" in bad[0][1]


def test_a_grid_over_hardware_is_refused_under_slurm():
    from hydralign.sweep.grid_check import bad_cells

    # one launcher (one executor) submits every job; Hydra makes it from the config without the swept values
    total, bad = multirun_config(["method=dpo", "hydra/launcher=submitit_slurm"], ["hardware=4x8xA100,8xA100"],
                                 bad_cells)
    assert total == 2 and [name for name, _ in bad] == ["hardware=4x8xA100", "hardware=8xA100"]
    assert "but the SLURM job asks for 1 node(s) x 1 task(s), time limit 60 min: one launcher" in bad[0][1]
    assert "one multirun per hardware, not as a swept value" in bad[0][1]
    total, bad = multirun_config(MISSION, ["hardware.nodes=4,2"], bad_cells)
    assert total == 2 and [name for name, _ in bad] == ["hardware.nodes=2"]
    assert "runs one rank per device on 2 node(s) x 8 GPU(s), but the SLURM job asks for 4 node(s)" in bad[0][1]


# --- ranks from SLURM's variables ------------------------------------------------------------------
TASK_13_OF_32 = {  # srun's variables in task 13 of a 4 x 8 step (node 1, local rank 5), array element 7
    "SLURM_JOB_ID": "1234567", "SLURM_ARRAY_JOB_ID": "1234560", "SLURM_ARRAY_TASK_ID": "7",
    "SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NODEID": "1", "SLURM_NTASKS": "32", "SLURM_NNODES": "4",
    "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "32", "SLURM_STEP_NUM_NODES": "4",
    "SLURM_STEP_NODELIST": "gpu[007-009,012]", "SLURM_JOB_NODELIST": "gpu[007-009,012]",
    "SLURM_STEP_TASKS_PER_NODE": "8(x4)", "SLURM_TASKS_PER_NODE": "8(x4)"}


def test_a_slurm_task_maps_to_torchruns_variables():
    assert slurm_rank_env(TASK_13_OF_32) == {
        "RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1",
        "GROUP_RANK": "1", "MASTER_ADDR": "gpu007", "MASTER_PORT": str(15000 + 4567),
        "TORCHELASTIC_RUN_ID": "slurm-1234567"}
    # every task of the job agrees on the rendezvous; another job (array element) gets another port
    task_0 = {**TASK_13_OF_32, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    assert {k: slurm_rank_env(task_0)[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")} == {
        "MASTER_ADDR": "gpu007", "MASTER_PORT": "19567", "WORLD_SIZE": "32"}
    assert slurm_rank_env({**TASK_13_OF_32, "SLURM_JOB_ID": "1234568"})["MASTER_PORT"] == "19568"
    assert slurm_rank_env({**TASK_13_OF_32, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    uneven = {**TASK_13_OF_32, "SLURM_STEP_NUM_TASKS": "5", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
              "SLURM_PROCID": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "2", "SLURM_STEP_NUM_NODES": "3"}
    assert slurm_rank_env(uneven)["LOCAL_WORLD_SIZE"] == "1" and slurm_rank_env(uneven)["WORLD_SIZE"] == "5"


def test_processes_that_are_no_slurm_rank():
    batch_script = {k: v for k, v in TASK_13_OF_32.items() if not k.startswith("SLURM_STEP")}
    batch_script.update(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    assert step_tasks(batch_script) == 1 and slurm_rank_env(batch_script) is None  # sbatch's own process
    assert step_tasks({}) == 0 and slurm_rank_env({}) is None  # outside SLURM
    one_task = {**TASK_13_OF_32, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert slurm_rank_env(one_task) is None  # srun -n 1: one process, which may start its own ranks
    assert slurm_rank_env({**TASK_13_OF_32, "LOCAL_RANK": "3"}) is None  # torchrun inside an allocation


@pytest.mark.parametrize("nodelist, host", [("gpu[007-009,012]", "gpu007"), ("node1,node2", "node1"),
                                            ("a[2]", "a2"), ("dgx-[01-04]-ib", "dgx-01-ib"),
                                            ("x[10,3-4],y1", "x10"), ("localhost", "localhost")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_tasks_on_node():
    assert [tasks_on_node("8(x4)", n) for n in range(4)] == [8, 8, 8, 8]
    assert [tasks_on_node("2(x2),1", n) for n in range(3)] == [2, 2, 1]


# --- where the job runs: the check, the join, the NCCL environment ---------------------------------
def test_machine_check_inside_slurm_steps(monkeypatch, environ):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: 8)
    hw = multirun_config(["hardware=4x8xA100"]).hardware
    environ.update({**TASK_13_OF_32, "SLURM_STEP_NUM_TASKS": "8"})
    with pytest.raises(ConfigError, match=r"this SLURM step runs 8 task\(s\). Submit it with "
                                          r"hydra/launcher=submitit_slurm \(it asks for 4 node\(s\) x 8 task"):
        hardware.check_machine(hw)
    environ.update(TASK_13_OF_32)
    hardware.check_machine(hw)  # 32 tasks on 4 nodes: each one is a rank
    for name in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS"):  # a batch script running hydralign itself
        environ.pop(name)
    with pytest.raises(ConfigError, match=r"submit it to SLURM \(add hydra/launcher=submitit_slurm and -m\)"):
        hardware.check_machine(hw)


def test_the_job_joins_its_slurm_step_and_sets_the_nccl_environment_before_training(monkeypatch, environ):
    """cli.task in SLURM task 13 of 32: it becomes rank 13, starts no ranks of its own, and the preset's
    hardware.env is in the environment when training (and its process group) starts."""
    import hydralign.distributed.launch
    import hydralign.run.job
    from hydralign.cli import task

    seen = {}

    def fake_run(cfg, started=None, plan=None):
        seen.update({k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT",
                                                    "TORCH_NCCL_DUMP_ON_TIMEOUT", "NCCL_DEBUG")})
        return {"val/exact_match": 0.5}

    def no_launch(*args, **kwargs):
        raise AssertionError("hydralign started ranks of its own inside a SLURM task")

    monkeypatch.setattr(hardware, "visible_gpus", lambda: 8)
    monkeypatch.setattr(hydralign.run.job, "run", fake_run)
    monkeypatch.setattr(hydralign.distributed.launch, "launch", no_launch)
    monkeypatch.setattr("hydralign.run.console.configure_console", lambda: None)
    environ.update({**TASK_13_OF_32, "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"})  # inherited: the preset's wins
    cfg = multirun_config(["method=dpo", "hardware=4x8xA100"])
    with open_dict(cfg):
        del cfg["hydra"]
    assert task(cfg) == 0.5
    assert seen == {"RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "32", "MASTER_ADDR": "gpu007",
                    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_BLOCKING_WAIT": "0",
                    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1", "NCCL_DEBUG": "WARN"}


def test_multi_gpu_presets_carry_the_nccl_settings_and_a_timeout():
    from hydralign.distributed.strategies import build_strategy
    from hydralign.plan.core import make_plan

    for preset in ("8xA100", "8xH100", "4x8xA100"):
        hw = multirun_config([f"hardware={preset}"]).hardware
        assert hw.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and hw.env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
        assert hw.dist_timeout_min == 30
    cfg = multirun_config(["hardware=cpu_2proc", "hardware.dist_timeout_min=45"])
    assert build_strategy(make_plan(cfg), cfg)._timeout == timedelta(minutes=45)
    cfg = multirun_config(["hardware=cpu_2proc", "hardware.strategy=fsdp", "hardware.dist_timeout_min=5"])
    assert build_strategy(make_plan(cfg), cfg)._timeout == timedelta(minutes=5)
    cfg = multirun_config(["hardware=cpu_2proc"])  # null: Lightning's default
    assert build_strategy(make_plan(cfg), cfg)._timeout == timedelta(minutes=30)
    with pytest.raises(ConfigError, match=r"hardware.dist_timeout_min=0: give the minutes"):
        make_plan(multirun_config(["hardware=cpu_2proc", "hardware.dist_timeout_min=0"]))


def test_a_batch_scripts_own_process_starts_the_ranks_of_one_node(environ):
    """sbatch running ``python -m hydralign hardware=cpu_2proc`` itself (no srun): one process, not a rank; it
    starts its ranks, and in them Lightning reads torchrun's variables, not SLURM's task count (1)."""
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    from hydralign.distributed.launch import needs_launch, rank_env

    hw = multirun_config(["hardware=cpu_2proc"]).hardware
    environ.update(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_JOB_ID="77", SLURM_JOB_NAME="job")
    assert needs_launch(hw)
    environ.update(rank_env(1, 2, 29555, {}))
    assert TorchElasticEnvironment.detect() and not needs_launch(hw)
