"""What a hardware preset needs vs what this machine has (no torch involved)."""

from __future__ import annotations

import pytest

from hydralign.distributed import machine as hardware
from hydralign.errors import ConfigError
from tests.helpers import compose_cfg


def hw(name):
    return compose_cfg([f"hardware={name}"]).hardware


def test_cpu_presets(monkeypatch):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    hardware.check_machine(hw("cpu"))
    hardware.check_machine(hw("cpu_2proc"))  # one node: hydralign starts the ranks itself (hydralign.distributed.launch)
    monkeypatch.setenv("LOCAL_RANK", "0")
    hardware.check_machine(hw("cpu_2proc"))  # or joins the ranks torchrun started


def test_gpu_preset_without_gpus(monkeypatch):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match=r"hardware=1xA100 needs 1 node\(s\) x 1 GPU\(s\).*0 visible GPU"):
        hardware.check_machine(hw("1xA100"))


def test_multi_node_needs_a_launcher(monkeypatch):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: 8)
    monkeypatch.setenv("LOCAL_RANK", "0")
    for var in ("SLURM_NNODES", "NNODES", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    hardware.check_machine(hw("8xA100"))
    with pytest.raises(ConfigError, match=r"torchrun --nnodes 4 --nproc-per-node 8"):
        hardware.check_machine(hw("4x8xA100"))
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ConfigError, match=r"once per node with srun") as err:  # no launcher at all
        hardware.check_machine(hw("4x8xA100"))
    assert "PITFALLS" not in str(err.value) and "breaks under Hydra multiruns" in str(err.value)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NNODES", "4")
    with pytest.raises(ConfigError, match=r"submit it to SLURM"):  # a batch script's own process is no rank
        hardware.check_machine(hw("4x8xA100"))
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "32")  # one of srun's 32 tasks (hydralign.distributed.slurm joins it)
    hardware.check_machine(hw("4x8xA100"))


def test_visible_gpus_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(hardware.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert hardware.visible_gpus() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware.visible_gpus() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert hardware.visible_gpus() == 2
