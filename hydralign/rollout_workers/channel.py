"""How the learners and the generator processes meet. hydralign's launcher starts both and gives them one rendezvous
port (``HYDRALIGN_ROLLOUT_PORT``); learner 0 hosts a TCP store there.

- Weights travel over a process group of learner 0 and the generators (learner 0 is its rank 0, generator g its
  rank 1 + g), separate from the learners' own group, so Lightning's collectives never include a generator: gloo
  through CPU memory on CPU hardware, NCCL between the GPUs on GPU hardware (``weights_backend``: learner 0 and
  every generator each have a CUDA device there, both sides derive it from the device they run on). Under FSDP2
  every learner gathers one tensor at a time (``DTensor.full_tensor``) and learner 0 broadcasts it, so no learner
  holds the whole model beside its shard; over NCCL each tensor is waited for on the host (a CUDA wait would only
  order the streams), which keeps one gathered tensor alive at a time and the timings honest.
- Rollouts and the start message are small pickled objects in the store (``post`` / ``take``): posting never waits
  for the reader, so a generator can run ``max_staleness`` batches ahead of the learner that will train on them.

A generator receives each tensor into its engine's own parameter where it matches, else into a buffer of its own that
the engine copies in and releases before the next arrives (``WeightStream``): no second copy of the policy.

With ``HYDRALIGN_VERIFY_SYNC=1`` each generator posts a checksum (SHA-256 of the bytes of a CPU copy of each tensor as
received, in order), and learner 0 compares it with its own after every broadcast, failing the job on a difference.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist

PORT_ENV, GENERATORS_ENV, RANK_ENV, LEARNERS_ENV = ("HYDRALIGN_ROLLOUT_PORT", "HYDRALIGN_GENERATORS",
                                                    "HYDRALIGN_GENERATOR_RANK", "HYDRALIGN_LEARNERS")
VERIFY_ENV = "HYDRALIGN_VERIFY_SYNC"


def _digest(h: Any, t: torch.Tensor) -> None:
    h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())


def checksum(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        _digest(h, t)
    return h.hexdigest()


def verify_sync() -> bool:
    return os.environ.get(VERIFY_ENV, "") == "1"


def full_tensors(named: Iterable[tuple[str, Any]], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Each of the policy's tensors whole, one at a time, in the order given (the state_dict's: the same on every
    learner). A DTensor (an FSDP2 shard) is gathered by all learners together, from ``device`` where it was
    offloaded to CPU; the previous tensor is released before the next is gathered. Used by the broadcast to the
    generators and by the learners' own vLLM engines (``colocated``)."""
    with torch.no_grad():
        for name, tensor in named:
            if hasattr(tensor, "full_tensor"):
                if tensor.device.type == "cpu" and torch.device(device).type == "cuda":
                    tensor = tensor.to(device)
                tensor = tensor.full_tensor()
            yield name, tensor.detach()


def weights_backend(device: torch.device) -> str:
    """The weights group's backend for a process on ``device``: NCCL between CUDA devices, else gloo."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _weights_group(store: Any, rank: int, size: int, timeout: datetime.timedelta, backend: str) -> Any:
    prefixed = dist.PrefixStore("weights", store)
    if backend == "nccl":  # (store, rank, size, timeout): torch/csrc/distributed/c10d/init.cpp; communicators are
        return dist.ProcessGroupNCCL(prefixed, rank, size, timeout)  # made at the first broadcast, on its device
    return dist.ProcessGroupGloo(prefixed, rank, size, timeout)


def _broadcast(pg: Any, tensor: torch.Tensor) -> None:
    """Broadcast from rank 0 and wait for it on the host: NCCL's ``wait`` only makes this stream wait, so a CUDA
    tensor is synchronized too (its sender may then free it; its receiver reads it)."""
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    pg.broadcast([tensor], opts).wait()
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


class Channel:
    def __init__(self, store: Any, weights: Optional[Any], learners: int, generators: int, learner_rank: Optional[int],
                 generator_rank: Optional[int], device: torch.device = torch.device("cpu")):
        self.store, self.weights, self.learners, self.generators = store, weights, learners, generators
        self.learner_rank, self.generator_rank = learner_rank, generator_rank
        self.device = torch.device(device)  # where the broadcast tensors live: CPU (gloo) or this process's GPU (NCCL)
        self.header_wait_s = 0.0  # the last send_weights: learner 0 waiting for the generators to be ready

    @classmethod
    def open(cls, learner_rank: Optional[int] = None, timeout_s: float = 1800.0,
             connect_timeout_s: Optional[float] = None, device: torch.device = torch.device("cpu")) -> Channel:
        """Join as learner ``learner_rank``, or (None) as the generator named by ``HYDRALIGN_GENERATOR_RANK``.
        ``connect_timeout_s``: how long to wait for the others to join (a generator starts at once, learner 0
        opens the store only once its data, model and sharding are ready); then ``timeout_s`` for every wait.
        ``device``: this process's device (learner 0 and every generator: all CUDA on GPU hardware, else CPU), which
        picks the weights group's backend (``weights_backend``)."""
        if PORT_ENV not in os.environ:
            raise RuntimeError(f"{PORT_ENV} is not set: generator processes are started by hydralign's own launcher "
                               "(python -m hydralign ...) or are tasks of a torchrun/srun launch that hydralign split "
                               "(hydralign.distributed.generator_tasks), not started by hand")
        gens, learners = int(os.environ[GENERATORS_ENV]), int(os.environ[LEARNERS_ENV])
        g = None if learner_rank is not None else int(os.environ[RANK_ENV])
        timeout = datetime.timedelta(seconds=timeout_s)
        host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ[PORT_ENV])
        store = dist.TCPStore(host, port, learners + gens, learner_rank == 0,
                              timeout=datetime.timedelta(seconds=connect_timeout_s or timeout_s))
        weights = None
        backend = weights_backend(device)
        if learner_rank == 0 or g is not None:
            weights = _weights_group(store, 0 if g is None else 1 + g, 1 + gens, timeout, backend)
        store.set_timeout(timeout)
        return cls(store, weights, learners, gens, learner_rank, g, device if backend == "nccl" else "cpu")

    # --- small objects through the store ---------------------------------------------------------------------
    def post(self, key: str, obj: Any) -> None:
        self.store.set(key, pickle.dumps(obj))

    def take(self, key: str, keep: bool = False) -> Any:
        """The object posted under ``key`` (waits for it); removed from the store unless ``keep``."""
        data = self.store.get(key)
        if not keep:
            self.store.delete_key(key)
        return pickle.loads(data)

    # --- weights ---------------------------------------------------------------------------------------------
    def send_weights(self, named: Iterator[tuple[str, torch.Tensor]], version: int) -> Optional[str]:
        """Every learner calls this with the same version (FSDP2: each tensor is gathered by all); learner 0
        broadcasts the header and each tensor to the generators. Returns the checksum every generator confirmed
        (``HYDRALIGN_VERIFY_SYNC=1``, learner 0), else None."""
        digest = hashlib.sha256()
        self.header_wait_s = 0.0
        if self.learner_rank == 0:  # returns once every generator is ready to receive (done with its batch)
            started = time.perf_counter()
            _broadcast(self.weights, torch.tensor([version], dtype=torch.int64, device=self.device))
            self.header_wait_s = time.perf_counter() - started
        for _, full in full_tensors(named, self.device):
            if self.learner_rank == 0:
                buf = (full.detach().to("cpu", copy=True).contiguous() if self.device.type == "cpu"
                       else full.detach().to(self.device).contiguous())  # NCCL: learner 0's own GPU tensor
                _broadcast(self.weights, buf)
                if verify_sync():
                    _digest(digest, buf)
        if self.learner_rank == 0 and verify_sync():
            mine = digest.hexdigest()
            for g in range(self.generators):
                theirs = self.take(f"checksum/{g}/{version}")
                if theirs != mine:
                    raise RuntimeError(f"weight sync at version {version}: generator {g}'s weights differ from "
                                       f"learner 0's (sha256 {theirs[:12]} vs {mine[:12]})")
            return mine
        return None

    def recv_weights(self, layout: list[tuple[str, Any, tuple]],
                     targets: Optional[list[Optional[torch.Tensor]]] = None) -> tuple[int, WeightStream]:
        """A generator: the next broadcast's version (its header, received now) and its tensors as a stream
        (received one at a time as it is iterated, in the learners' state_dict order: ``layout``, name, dtype and
        shape per tensor). ``targets``: per tensor, a contiguous tensor on this channel's device to receive into
        (an engine's own parameter), or None for a buffer of its own, allocated as it comes."""
        header = torch.zeros(1, dtype=torch.int64, device=self.device)
        _broadcast(self.weights, header)
        version = int(header[0])
        return version, WeightStream(self, version, layout, targets or [None] * len(layout))


class WeightStream:
    """One broadcast's tensors, each received as the stream is iterated (once, in full: the broadcast stays in step
    with learner 0 only if every tensor is taken; ``finish`` sees to it). With ``HYDRALIGN_VERIFY_SYNC=1`` a
    running SHA-256 of each tensor's bytes as received (a CPU copy) is posted once the last one is in."""

    def __init__(self, channel: Channel, version: int, layout: list[tuple[str, Any, tuple]],
                 targets: list[Optional[torch.Tensor]]):
        self.channel, self.version, self.layout, self.targets = channel, version, layout, targets
        self._received = self._receive()  # one pass: iterating again goes on where the last stopped

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._received

    def _receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        digest, verify = hashlib.sha256(), verify_sync()
        for (name, dtype, shape), target in zip(self.layout, self.targets):
            buf = target if target is not None else torch.empty(tuple(shape), dtype=dtype, device=self.channel.device)
            _broadcast(self.channel.weights, buf)
            if verify:
                _digest(digest, buf)
            yield name, buf
            del buf  # the consumer's reference alone keeps it (one received tensor at a time)
        if verify:
            self.channel.post(f"checksum/{self.channel.generator_rank}/{self.version}", digest.hexdigest())

    def finish(self) -> None:
        """After the engine took the stream: the rest of it received and dropped if it stopped early (the job
        fails: a weight was not loaded), so learner 0 is not left waiting in a broadcast."""
        left = sum(1 for _ in self._received)  # (also lets a consumer that stopped at the last tensor post its digest)
        if left:
            raise RuntimeError(f"weight sync at version {self.version}: the engine left {left} of the "
                               f"{len(self.layout)} tensors untaken")
