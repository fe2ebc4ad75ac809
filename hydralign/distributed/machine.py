"""Can this machine run the plan's hardware preset? Answered without importing torch.

GPUs are counted from the device files the NVIDIA driver creates (``/dev/nvidia<N>``), limited by
``CUDA_VISIBLE_DEVICES``; a multi-node preset needs the launcher's environment (torchrun's
``WORLD_SIZE`` or SLURM's ``SLURM_NNODES``). Jobs submitted to SLURM (``hydra/launcher=submitit_slurm``) are
checked in their tasks, where they run, never on the login node that submits them.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from hydralign.errors import ConfigError


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


def requirement(hw: Any) -> str:
    what = "GPU" if hw.accelerator == "gpu" else "CPU process"
    return (f"{hw.nodes} node(s) x {hw.devices_per_node} {what}(s) = world_size {hw.nodes * hw.devices_per_node}, "
            f"strategy {hw.strategy}, precision {hw.precision}")


def check_machine(hw: Any) -> None:
    """Raise ConfigError naming what the ``hardware`` preset needs and what this machine has."""
    from hydralign.distributed.slurm import step_tasks

    if hw.accelerator == "gpu":
        have = visible_gpus()
        if have < hw.devices_per_node:
            raise ConfigError(
                f"hardware={hw.name} needs {requirement(hw)}; this machine has {have} visible "
                f"GPU(s). Run it on a machine with {hw.devices_per_node} GPU(s) per node, submit it to SLURM "
                f"(add hydra/launcher=submitit_slurm and -m), use hardware=cpu (or cpu_2proc) here, or add "
                "dry_run=true to print the plan only.")
    world = hw.nodes * hw.devices_per_node
    tasks = step_tasks()
    if tasks > 1 and "LOCAL_RANK" not in os.environ and tasks != world:
        raise ConfigError(
            f"hardware={hw.name} needs {requirement(hw)}, one task per device; this SLURM step runs {tasks} "
            f"task(s). Submit it with hydra/launcher=submitit_slurm (it asks for {hw.nodes} node(s) x "
            f"{hw.devices_per_node} task(s)) or srun --nodes {hw.nodes} --ntasks-per-node {hw.devices_per_node}")
    if hw.nodes > 1 and "LOCAL_RANK" not in os.environ and tasks <= 1:
        raise ConfigError(
            f"hardware={hw.name} runs {world} processes on {hw.nodes} nodes: submit it to SLURM (add "
            "hydra/launcher=submitit_slurm and -m), or start it once per node with srun (one task per device) "
            f"or torchrun --nnodes {hw.nodes} --nproc-per-node {hw.devices_per_node} -m hydralign ...; on one node "
            "hydralign starts its processes itself (never by re-running its command line, which breaks under "
            "Hydra multiruns)")
    if hw.nodes > 1 and launched_nodes() != hw.nodes:
        raise ConfigError(
            f"hardware={hw.name} needs {requirement(hw)}; this process was launched on "
            f"{launched_nodes()} node(s). Start it once per node under SLURM (srun, one task per GPU) or "
            f"torchrun --nnodes {hw.nodes} --nproc-per-node {hw.devices_per_node}; "
            "add dry_run=true to print the plan only.")


def check_generation_backend(cfg: Any, plan: Any = None) -> None:
    """Generator processes (the plan has checked the config): started by hydralign's launcher (one node), or tasks of
    a torchrun/srun launch of learners + generators tasks (``distributed.generator_tasks``: the last ranks generate);
    with generation.backend=vllm the vllm package must import here, where they will run, or where the learners run their
    own engines (``plan``: a method that samples with hardware.generator_devices=0); checked beside the device count,
    after dry_run has printed the plan."""
    import importlib.util

    gens = int(cfg.hardware.get("generator_devices", 0) or 0)
    _check_generator_tasks(cfg.hardware, gens)
    colocated = getattr(plan, "rollout", None) is not None and not gens
    if not (gens or colocated) or cfg.get("generation", {}).get("backend") != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        who = "the generator processes need it" if gens else "each learner builds its own engine with it"
        raise ConfigError(f"generation.backend=vllm: the vllm package cannot be imported on this machine; {who} "
                          "(`pip install vllm`, a version built for this torch and CUDA), or use generation.backend=hf")


def _check_generator_tasks(hw: Any, gens: int) -> None:
    """Under torchrun or srun the launch must hold every learner and generator (one task per device)."""
    world, total = os.environ.get("WORLD_SIZE"), int(hw.nodes) * int(hw.devices_per_node)
    if not gens or "LOCAL_RANK" not in os.environ or "HYDRALIGN_GENERATOR_TASKS" in os.environ:
        return
    if world is None or int(world) != total:
        raise ConfigError(
            f"hardware.generator_devices={gens}: this launch has WORLD_SIZE={world} tasks, but {requirement(hw)} is "
            f"{total - gens} learners + {gens} generators, one task per device (the last {gens} ranks generate): "
            f"torchrun --nnodes {hw.nodes} --nproc-per-node {hw.devices_per_node}, srun --nodes {hw.nodes} "
            f"--ntasks-per-node {hw.devices_per_node} (hydra/launcher=submitit_slurm asks for that), or "
            "`python -m hydralign ...` on one node (hydralign starts both itself)")
