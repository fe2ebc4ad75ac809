"""How the learners and the generator processes meet. hydralign's launcher starts both and gives them one rendezvous
port (``HYDRALIGN_ROLLOUT_PORT``); learner 0 hosts a TCP store there.

- Weights travel over a gloo process group of learner 0 and the generators (learner 0 is its rank 0, generator g its
  rank 1 + g), separate from the learners' own group, so Lightning's collectives never include a generator. Under
  FSDP2 every learner gathers one tensor at a time (``DTensor.full_tensor``) and learner 0 broadcasts it, so no
  learner holds the whole model beside its shard.
- Rollouts and the start message are small pickled objects in the store (``post`` / ``take``): posting never waits
  for the reader, so a generator can run ``max_staleness`` batches ahead of the learner that will train on them.

With ``HYDRALIGN_VERIFY_SYNC=1`` each generator posts a checksum (SHA-256 of the bytes) of the weights it received,
and learner 0 compares it with its own after every broadcast, failing the job on a difference.
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


def checksum(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_sync() -> bool:
    return os.environ.get(VERIFY_ENV, "") == "1"


def _broadcast(pg: Any, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    pg.broadcast([tensor], opts).wait()


class Channel:
    def __init__(self, store: Any, weights: Optional[Any], learners: int, generators: int, learner_rank: Optional[int],
                 generator_rank: Optional[int]):
        self.store, self.weights, self.learners, self.generators = store, weights, learners, generators
        self.learner_rank, self.generator_rank = learner_rank, generator_rank
        self.header_wait_s = 0.0  # the last send_weights: learner 0 waiting for the generators to be ready

    @classmethod
    def open(cls, learner_rank: Optional[int] = None, timeout_s: float = 1800.0,
             connect_timeout_s: Optional[float] = None) -> Channel:
        """Join as learner ``learner_rank``, or (None) as the generator named by ``HYDRALIGN_GENERATOR_RANK``.
        ``connect_timeout_s``: how long to wait for the others to join (a generator starts at once, learner 0
        opens the store only once its data, model and sharding are ready); then ``timeout_s`` for every wait."""
        if PORT_ENV not in os.environ:
            raise RuntimeError(f"{PORT_ENV} is not set: generator processes are started by hydralign's own launcher "
                               "(python -m hydralign ..., one node), not by torchrun or srun")
        gens, learners = int(os.environ[GENERATORS_ENV]), int(os.environ[LEARNERS_ENV])
        g = None if learner_rank is not None else int(os.environ[RANK_ENV])
        timeout = datetime.timedelta(seconds=timeout_s)
        host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ[PORT_ENV])
        store = dist.TCPStore(host, port, learners + gens, learner_rank == 0,
                              timeout=datetime.timedelta(seconds=connect_timeout_s or timeout_s))
        weights = None
        if learner_rank == 0 or g is not None:
            weights = dist.ProcessGroupGloo(dist.PrefixStore("weights", store), 0 if g is None else 1 + g, 1 + gens,
                                            timeout)
        store.set_timeout(timeout)
        return cls(store, weights, learners, gens, learner_rank, g)

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
        sent: list[torch.Tensor] = []
        self.header_wait_s = 0.0
        if self.learner_rank == 0:  # returns once every generator is ready to receive (done with its batch)
            started = time.perf_counter()
            _broadcast(self.weights, torch.tensor([version], dtype=torch.int64))
            self.header_wait_s = time.perf_counter() - started
        for _, tensor in named:
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            if self.learner_rank == 0:
                buf = full.detach().to("cpu", copy=True).contiguous()
                _broadcast(self.weights, buf)
                if verify_sync():
                    sent.append(buf)
        if self.learner_rank == 0 and verify_sync():
            mine = checksum(sent)
            for g in range(self.generators):
                theirs = self.take(f"checksum/{g}/{version}")
                if theirs != mine:
                    raise RuntimeError(f"weight sync at version {version}: generator {g}'s weights differ from "
                                       f"learner 0's (sha256 {theirs[:12]} vs {mine[:12]})")
            return mine
        return None

    def recv_weights(self, buffers: list[torch.Tensor]) -> int:
        """A generator: the next broadcast into ``buffers`` (CPU, contiguous, in the learners' state_dict order);
        returns its version."""
        header = torch.zeros(1, dtype=torch.int64)
        _broadcast(self.weights, header)
        for buf in buffers:
            _broadcast(self.weights, buf)
        version = int(header[0])
        if verify_sync():
            self.post(f"checksum/{self.generator_rank}/{version}", checksum(buffers))
        return version
