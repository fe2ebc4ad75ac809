"""SLURM: jobs submitted by Hydra's submitit launcher, and the ranks their tasks become.

    python -m hydralign method=dpo hardware=4x8xA100 hydra/launcher=submitit_slurm -m lr=5e-7,5e-6

**Submission** (the login node). ``conf/hydra/launcher/submitit_slurm.yaml`` takes the plugin's option name and
extends its config: the job asks for ``hardware.nodes`` nodes with ``hardware.devices_per_node`` tasks each (one
per device), ``hardware.slurm_gpus_per_node`` GPUs and ``hardware.slurm_cpus_per_task`` cores, for
``hardware.slurm_time_min`` minutes. The grid check (``hydralign.sweep.grid_check``) plans every job here, refuses a
launcher that asks for another shape than the preset (``resource_problem``) and a sweep whose jobs need different
shapes (one executor submits them all), and leaves the machine check (are the GPUs there?) to the tasks, where
the job runs: the login node needs no GPU. ``dry_run=true`` prints the plans here and submits nothing.

**Ranks** (in each SLURM task). submitit runs the Hydra job function once in every task of the job (srun starts
nodes x devices_per_node of them). ``join_slurm_step`` gives such a task torchrun's variables, derived from
SLURM's (``slurm_rank_env``): it is then a rank like any torchrun rank, hydralign starts no processes of its own,
and Lightning sees a torchrun-style launch (so its SLURM auto-requeue, which would answer submitit's pre-timeout
signal with ``scontrol requeue``, stays off; continuing a run is ``resume=``'s job). A step of one task (a batch
script that runs ``python -m hydralign`` itself) is not a rank: on one node hydralign starts the ranks itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Optional

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
PORT_BASE = 15000  # MASTER_PORT = PORT_BASE + the job id's last 4 digits (as Lightning's SLURM environment)


# --- submission (login node) -----------------------------------------------------------------------
def submits_to_slurm(config: Any) -> bool:
    """The multirun's launcher submits its jobs to SLURM (they run elsewhere)."""
    from omegaconf import OmegaConf

    return OmegaConf.select(config, "hydra.launcher._target_", default=None) == SLURM_LAUNCHER


def requested(config: Any) -> dict[str, Any]:
    """What each SLURM job of the multirun asks for (the launcher's resolved keys)."""
    from omegaconf import OmegaConf

    keys = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "timeout_min", "partition")
    return {k: OmegaConf.select(config, f"hydra.launcher.{k}", default=None) for k in keys}


def describe(asked: Mapping[str, Any]) -> str:
    gpus = f", {asked['gpus_per_node']} GPU(s) per node" if asked.get("gpus_per_node") else ""
    cpus = f", {asked['cpus_per_task']} CPU(s) per task" if asked.get("cpus_per_task") else ""
    part = f", partition {asked['partition']}" if asked.get("partition") else ""
    return (f"{asked['nodes']} node(s) x {asked['tasks_per_node']} task(s){gpus}{cpus}, "
            f"time limit {asked['timeout_min']} min{part}")


def resource_problem(asked: Mapping[str, Any], hw: Any, fix: bool = True) -> Optional[str]:
    """Why a SLURM job asking for ``asked`` cannot run ``hw`` (one task per device, every device on its node),
    or None; with ``fix``, the ``hydra.launcher.*`` keys that would. Keys set by hand can disagree, and so can
    the jobs of a sweep over ``hardware`` (one launcher, made from the config without swept values)."""
    wanted = {"nodes": int(hw.nodes), "tasks_per_node": int(hw.devices_per_node)}
    if hw.accelerator == "gpu":
        wanted["gpus_per_node"] = int(hw.devices_per_node)
    wrong = [k for k, v in wanted.items() if asked.get(k) is None or int(asked[k]) != v]
    if not wrong:
        return None
    text = (f"hardware={hw.name} runs one rank per device on {hw.nodes} node(s) x {hw.devices_per_node} "
            f"{'GPU' if hw.accelerator == 'gpu' else 'CPU process'}(s), but the SLURM job asks for {describe(asked)}")
    if not fix:
        return text
    return (text + ": " + ", ".join(f"hydra.launcher.{k}={wanted[k]}" for k in wrong)
            + " (conf/hydra/launcher/submitit_slurm.yaml takes them from the hardware preset)")


# --- ranks (each SLURM task) -----------------------------------------------------------------------
def step_tasks(environ: Optional[Mapping[str, str]] = None) -> int:
    """How many tasks srun started in this process's SLURM step (each of them a rank); 1 for a batch script's
    own process (it has SLURM_NTASKS, the allocation's task count, but no step of tasks); 0 outside SLURM."""
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env:
        return 0
    if "SLURM_STEP_NUM_TASKS" in env:  # srun's
        return int(env["SLURM_STEP_NUM_TASKS"])
    if "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        return int(env.get("SLURM_NTASKS") or 1)
    return 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[007-010,012],cpu3`` -> ``gpu007`` (leading zeros kept),
    ``a1,a2`` -> ``a1``. srun's default (block) distribution puts task 0 on it."""
    head = re.match(r"([^,\[]*)(\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if head is None or not head.group(0):
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, _, ranges, suffix = head.groups()
    if ranges is None:
        return prefix + suffix
    return prefix + re.split(r"[,-]", ranges)[0] + suffix


def tasks_on_node(spec: str, node: int) -> int:
    """Tasks on node ``node`` from SLURM's per-node counts: ``8(x4)`` -> 8 on each of 4 nodes; ``2(x2),1``."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            raise ValueError(f"cannot read SLURM's tasks per node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node]


def slurm_rank_env(environ: Mapping[str, str]) -> Optional[dict[str, str]]:
    """torchrun's variables for this SLURM task, from SLURM's own: RANK = SLURM_PROCID, LOCAL_RANK =
    SLURM_LOCALID, WORLD_SIZE = the step's task count, NODE_RANK/GROUP_RANK = SLURM_NODEID, MASTER_ADDR = the
    step's first node, MASTER_PORT = 15000 + the job id's last 4 digits (each job of a job array has its own
    id) unless MASTER_PORT is set. None when this process is no rank of a multi-task step, or when torchrun
    already made it a rank (torchrun started inside an allocation: its variables win)."""
    tasks = step_tasks(environ)
    if tasks <= 1 or "LOCAL_RANK" in environ:
        return None
    node = int(environ.get("SLURM_NODEID", "0"))
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    local_world = tasks_on_node(per_node, node) if per_node else tasks // nodes
    nodelist = (environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
                or environ.get("SLURM_NODELIST") or "127.0.0.1")
    job_id = environ.get("SLURM_JOB_ID", "0")
    port = environ.get("MASTER_PORT") or str(PORT_BASE + int(re.sub(r"\D", "", job_id)[-4:] or 0))
    return {"RANK": environ["SLURM_PROCID"], "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "WORLD_SIZE": str(tasks), "LOCAL_WORLD_SIZE": str(local_world), "NODE_RANK": str(node),
            "GROUP_RANK": str(node), "MASTER_ADDR": first_host(nodelist), "MASTER_PORT": port,
            # how Lightning (torch.distributed.is_torchelastic_launched) recognizes a torchrun-style launch
            "TORCHELASTIC_RUN_ID": f"slurm-{job_id}"}


def join_slurm_step(environ: Optional[dict] = None) -> bool:
    """Make this process a rank when it is a task of a multi-task SLURM step; True when it did."""
    env = os.environ if environ is None else environ
    ranks = slurm_rank_env(env)
    if ranks is None:
        return False
    env.update(ranks)
    return True
