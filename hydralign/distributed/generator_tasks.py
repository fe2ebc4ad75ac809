"""Generator processes as tasks of a torchrun or srun launch (issue 19).

``hardware.generator_devices=N`` started by the cluster rather than by hydralign's own launcher: torchrun with
``--nproc-per-node <hardware.devices_per_node>`` on each of ``hardware.nodes`` nodes, or srun (a SLURM job submitted
with ``hydra/launcher=submitit_slurm``: nodes x devices_per_node tasks, each made a rank by
``slurm.join_slurm_step``). The launch then has WORLD_SIZE = learners + generators tasks and the LAST N global ranks
are the generators. Every task works the split out alike from its own variables (``split_env``):

- a learner keeps RANK and LOCAL_RANK (the generators come last) and gets WORLD_SIZE = the learners and, on a node
  that hosts generators, LOCAL_WORLD_SIZE = the learners there, before Lightning or torch.distributed read them;
- a generator task runs the generator loop (``rollout_workers.generator.serve``) instead of training, as generator
  RANK - learners, without the rank variables (it never joins the learners' world); on GPU hardware it is shown only
  the GPU of its LOCAL_RANK (CUDA_VISIBLE_DEVICES), as hydralign's own launcher shows its generators theirs;
- the rollout channel meets at MASTER_ADDR (where learner 0 runs; it hosts the store) on port MASTER_PORT + 10000
  (not + 1: under SLURM, MASTER_PORT is 15000 + the job id's last 4 digits, so the next job's is ours + 1).

Several nodes work where the learners fill whole nodes (Lightning needs as many learners on every node): the
generators are the last ``generator_devices / devices_per_node`` nodes (the plan refuses other splits, naming one).

Nobody supervises these tasks, so the end is settled through learner 0's store. A generator that fails exits
non-zero and the launch ends the job (torchrun stops every worker; srun does with SLURM_KILL_BAD_EXIT=1, which
conf/hydra/launcher/submitit_slurm.yaml sets). When the learners' run ends (done, stopped by a signal after its
checkpoint, pruned, failed), learner 0 posts ``tasks/done`` and waits (bounded) for each generator's ``tasks/bye/<g>``
(``end_generator_tasks``); a generator that sees it says bye and exits 0, whatever it was doing (a wait on the channel
that fails once learner 0 is gone is the end of the job, not a failure of it). One that has served every rollout
batch says bye and exits 0 at once. A stop signal (SIGTERM, SIGUSR1/2) is the learners' to act on: a generator task
ignores it and ends with them (as under hydralign's own launcher); when torchrun or srun stops a job that failed, it
is killed after their grace period.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Optional

from hydralign.errors import ConfigError
from hydralign.rollout_workers.channel import GENERATORS_ENV, LEARNERS_ENV, PORT_ENV, RANK_ENV

TASKS_ENV = "HYDRALIGN_GENERATOR_TASKS"  # set on every task of a split launch (the generators' count)
PORT_OFFSET = 10000
DONE_KEY, BYE_KEY = "tasks/done", "tasks/bye/{}"
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")  # what torch.distributed's env:// reads


def rollout_port(master_port: int) -> int:
    port = master_port + PORT_OFFSET
    return port if port <= 65535 else master_port - PORT_OFFSET


def _generator_gpu(environ: Mapping[str, str], local_rank: int) -> str:
    """The CUDA_VISIBLE_DEVICES of a generator task: the device of its LOCAL_RANK among those the task sees (all of
    the node's, as torchrun and srun's --gpus-per-node show them), or the one it was bound to."""
    mask = environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return str(local_rank)
    listed = [d.strip() for d in mask.split(",") if d.strip()]
    if len(listed) == 1:
        return listed[0]  # bound to its own GPU already (srun --gpus-per-task=1, --gpu-bind)
    if local_rank >= len(listed):
        raise ConfigError(f"a generator task with LOCAL_RANK={local_rank} sees CUDA_VISIBLE_DEVICES={mask}: show "
                          "every GPU of the node to each task (one task per GPU), or bind one GPU to each task")
    return listed[local_rank]


def split_env(environ: Mapping[str, str], generators: int, gpu: bool = False) -> dict[str, str]:
    """The environment of one task of a torchrun-style launch (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) whose last ``generators`` global ranks generate: a new mapping (pure). Tasks are placed
    in blocks (torchrun; srun's default distribution), so this node's first rank is RANK - LOCAL_RANK."""
    missing = [k for k in (*RANK_VARS[:3], "MASTER_PORT") if k not in environ]
    if missing:
        raise ConfigError(f"hardware.generator_devices={generators} under torchrun or srun: {', '.join(missing)} "
                          "not set (start the tasks with torchrun, or srun through hydra/launcher=submitit_slurm)")
    world, rank, local = int(environ["WORLD_SIZE"]), int(environ["RANK"]), int(environ["LOCAL_RANK"])
    learners = world - generators
    if learners < 1:
        raise ConfigError(f"hardware.generator_devices={generators} leaves no learner among the launch's {world} tasks")
    out = dict(environ)
    out.update({PORT_ENV: str(rollout_port(int(environ["MASTER_PORT"]))), GENERATORS_ENV: str(generators),
                LEARNERS_ENV: str(learners), TASKS_ENV: str(generators)})
    out.setdefault("MASTER_ADDR", "127.0.0.1")
    if rank < learners:
        first = rank - local
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
        out.update(WORLD_SIZE=str(learners), LOCAL_WORLD_SIZE=str(min(local_world, learners - first)))
        return out
    for name in RANK_VARS:
        out.pop(name, None)
    out[RANK_ENV] = str(rank - learners)
    if gpu:
        out["CUDA_VISIBLE_DEVICES"] = _generator_gpu(environ, local)
    return out


def _ranks(first: int, last: int) -> str:
    return f"rank {first}" if first == last else f"ranks {first}..{last}"


def join_generator_tasks(hw: Any, environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Make this task a learner or a generator of a split torchrun/srun launch: "learner", "generator", or None
    (no generator processes, or hydralign's own launcher starts them). Prints how the tasks split (task 0 and the
    generators)."""
    env = os.environ if environ is None else environ
    gens = int(hw.get("generator_devices", 0) or 0)
    if gens and TASKS_ENV in env:  # split already (a second job in this process)
        return "generator" if RANK_ENV in env else "learner"
    if not gens or "LOCAL_RANK" not in env:
        return None
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    new = split_env(env, gens, hw.accelerator == "gpu")
    for name in [k for k in env if k not in new]:
        del env[name]
    env.update(new)
    learners = world - gens
    if rank == 0 or rank >= learners:
        print(f"hydralign: {world} tasks: {_ranks(0, learners - 1)} the learners (world_size {learners}), "
              f"{_ranks(learners, world - 1)} the generator processes; task {rank} is "
              + (f"generator {rank - learners}" if rank >= learners else "learner 0")
              + f" (rollout store at {new['MASTER_ADDR']}:{new[PORT_ENV]})", flush=True)
    return "generator" if rank >= learners else "learner"


# --- the end of a split launch ---------------------------------------------------------------------------------------
_LEARNER_STORES: list[tuple[Any, int]] = []


def remember_store(store: Any, generators: int) -> None:
    """Learner 0 of a split launch: the channel's store, told at the end of the run (``end_generator_tasks``)."""
    if TASKS_ENV in os.environ:
        _LEARNER_STORES.append((store, generators))


def end_generator_tasks(wait_s: float = 60.0) -> None:
    """Learner 0, once its run ended (any way): tell the generator tasks, and wait up to ``wait_s`` for each to say
    bye (it then exits 0 by itself; this process's store must outlive that). A run that ended before it opened the
    channel (an error while loading: under submitit the task still exits 0, so srun would not end the job) opens the
    store now, only to tell them."""
    if TASKS_ENV in os.environ and os.environ.get("RANK") == "0" and not _LEARNER_STORES:
        import torch.distributed as dist

        try:
            store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ[PORT_ENV]), None, True,
                                  timeout=datetime.timedelta(seconds=wait_s), wait_for_workers=False)
            _LEARNER_STORES.append((store, int(os.environ[GENERATORS_ENV])))
        except Exception as err:
            print(f"hydralign: could not tell the generator tasks that the learners are done ({err})",
                  file=sys.stderr, flush=True)
    while _LEARNER_STORES:
        store, gens = _LEARNER_STORES.pop()
        try:
            store.set(DONE_KEY, b"1")
            store.wait([BYE_KEY.format(g) for g in range(gens)], datetime.timedelta(seconds=wait_s))
        except Exception as err:  # a generator gone already (it failed: the launch ends the job) or stuck
            print(f"hydralign: not every generator task said bye within {wait_s:g} s ({err}); the launch ends "
                  "the rest", file=sys.stderr, flush=True)


class LearnersDone:
    """A generator task's watch on learner 0's store (a connection of its own, in a thread): ``seen`` once the learners
    said done; it then says bye and, if the generator loop has not ended within ``grace_s`` (a wait that cannot
    notice learner 0 is gone: NCCL), ends this process with exit code 0."""

    def __init__(self, host: str, port: int, g: int, poll_s: float = 0.5, grace_s: float = 10.0):
        self.host, self.port, self.g, self.poll_s, self.grace_s = host, port, g, poll_s, grace_s
        self.seen, self.served, self.ended = threading.Event(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._watch, name="hydralign-learners-done", daemon=True)

    def _watch(self) -> None:
        import torch.distributed as dist

        try:  # no world size: this connection is not one of the channel's processes
            store = dist.TCPStore(self.host, self.port, None, False, timeout=datetime.timedelta(days=7),
                                  wait_for_workers=False)
            while not (self.served.is_set() or store.check([DONE_KEY])):
                time.sleep(self.poll_s)
            if not self.served.is_set():
                self.seen.set()
            store.set(BYE_KEY.format(self.g), b"1")
        except Exception:  # learner 0 gone without a word: the generator loop's own error says what happened
            return
        if self.seen.is_set() and not self.ended.wait(self.grace_s):
            print(f"hydralign: generator {self.g}: the learners are done; ending", flush=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def serve_task(cfg: Any) -> None:
    """This task is a generator process (``join_generator_tasks`` said so): serve the learners until every rollout
    batch is sampled or they say they are done."""
    from hydralign.distributed.preemption import STOP_SIGNALS
    from hydralign.rollout_workers.generator import serve

    for stop in STOP_SIGNALS:  # the learners' to act on: they checkpoint and end, and so does this task then
        signal.signal(stop, signal.SIG_IGN)
    watch = LearnersDone(os.environ["MASTER_ADDR"], int(os.environ[PORT_ENV]), int(os.environ[RANK_ENV]))
    watch.thread.start()
    try:
        serve(cfg)
        watch.served.set()
    except Exception as err:
        if not watch.seen.is_set():
            raise
        print(f"hydralign: generator {watch.g}: the learners are done ({type(err).__name__} on the channel once "
              "learner 0 left)", flush=True)
    finally:
        watch.ended.set()
    watch.thread.join(10.0)  # its bye posted
