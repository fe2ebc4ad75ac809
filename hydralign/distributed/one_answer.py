"""One answer per job: rank 0 works a question out (which checkpoint ``:last`` is, what ``resume=auto`` continues)
and every other rank takes its answer, so a source run that writes a new checkpoint while the ranks start cannot
give them different weights, and the store and file system are asked once per job instead of once per rank.

The job's process group is made here, before anything loads (``join_process_group``), with the backend and
timeout Lightning's strategy would use; Lightning then finds it made and uses it. The answer travels as a pickled
object over gloo (a gloo group beside an NCCL one on GPUs), so no accelerator is involved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from hydralign.errors import ConfigError, DataError

T = TypeVar("T")
_CPU_GROUP: list[Any] = []  # the gloo group answers travel in (the default group where it is gloo)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group(backend: str, timeout: Optional[Any] = None) -> None:
    """Join the job's ranks (torchrun-style environment: RANK, WORLD_SIZE, MASTER_ADDR/PORT), once per process."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return
    kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    rank = int(os.environ["RANK"])
    dist.init_process_group(backend, rank=rank, world_size=world_size(), **kwargs)
    print(f"hydralign: rank {rank} of {world_size()} joined the job ({backend})", flush=True)
    if backend == "nccl":
        import atexit

        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def _cpu_group():
    import torch.distributed as dist

    if not _CPU_GROUP:
        _CPU_GROUP.append(None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo"))
    return _CPU_GROUP[0]


def from_rank_zero(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result on every rank (a collective: every rank calls it). An error on rank 0
    is raised on every rank (a ConfigError or DataError as itself, anything else as a RuntimeError naming it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except Exception as err:
            box[0] = ("error", type(err).__name__, str(err))
            dist.broadcast_object_list(box, src=0, group=_cpu_group())
            raise
    dist.broadcast_object_list(box, src=0, group=_cpu_group())
    if box[0][0] == "ok":
        return box[0][1]
    _, kind, text = box[0]
    cls = {"ConfigError": ConfigError, "DataError": DataError}.get(kind)
    raise cls(text) if cls else RuntimeError(f"rank 0 failed: {kind}: {text}")
