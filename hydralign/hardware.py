"""Can this machine run the plan's hardware preset? Answered without importing torch.

GPUs are counted from the device files the NVIDIA driver creates (``/dev/nvidia<N>``), limited by
``CUDA_VISIBLE_DEVICES``; a multi-node preset needs the launcher's environment (torchrun's
``WORLD_SIZE`` or SLURM's ``SLURM_NNODES``).
"""

from __future__ import annotations

import glob
import os

from hydralign.errors import ConfigError
from hydralign.plan import Plan


def visible_gpus() -> int:
    physical = len(glob.glob("/dev/nvidia[0-9]*"))
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return physical
    listed = [d for d in mask.split(",") if d.strip() and d.strip() != "-1"]
    return min(physical, len(listed))


def launched_nodes() -> int:
    if "SLURM_NNODES" in os.environ:
        return int(os.environ["SLURM_NNODES"])
    if "NNODES" in os.environ:
        return int(os.environ["NNODES"])
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if world and local:
        return max(1, int(world) // max(1, int(local)))
    return 1


def requirement(plan: Plan) -> str:
    what = "GPU" if plan.accelerator == "gpu" else "CPU process"
    return (f"{plan.nodes} node(s) x {plan.devices_per_node} {what}(s) = world_size {plan.world_size}, "
            f"strategy {plan.strategy}, precision {plan.precision}")


def check_machine(plan: Plan, hardware_name: str) -> None:
    """Raise ConfigError naming what the preset needs and what this machine has."""
    if plan.accelerator == "gpu":
        have = visible_gpus()
        if have < plan.devices_per_node:
            raise ConfigError(
                f"hardware={hardware_name} needs {requirement(plan)}; this machine has {have} visible "
                f"GPU(s). Run it on a machine with {plan.devices_per_node} GPU(s) per node, "
                f"use hardware=cpu (or cpu_2proc) here, or add dry_run=true to print the plan only.")
    if plan.nodes > 1 and launched_nodes() != plan.nodes:
        raise ConfigError(
            f"hardware={hardware_name} needs {requirement(plan)}; this process was launched on "
            f"{launched_nodes()} node(s). Start it once per node under SLURM (srun, one task per GPU) or "
            f"torchrun --nnodes {plan.nodes} --nproc-per-node {plan.devices_per_node}; "
            "add dry_run=true to print the plan only.")
