"""vLLM inside the learners (``generation.backend=vllm`` with ``hardware.generator_devices=0``: TRL's "colocate"
mode): each learner builds its own engine on its own GPU, tensor parallel 1, and samples its own prompts with it.

- The engine joins the learners' existing ``torch.distributed`` world (vLLM's ``external_launcher`` backend: one
  engine per rank, each generating independently; it reads the torchrun-style variables ``launcher_env`` sets, its
  ``LOCAL_RANK`` the learner's CUDA device index), so every learner builds it at the same point
  (``on_train_start``): vLLM makes its groups over the whole world. vLLM's worker seeds Python's, NumPy's, torch's
  and CUDA's generators as it starts; the learner's own states are restored afterwards (its dropout, its data).
- It is built from the policy's config with random weights (``engines.vllm_engine``); before each rollout batch's
  sampling, if the policy changed since the last load, every learner gathers the policy one tensor at a time
  (``channel.full_tensors``: under FSDP2 ``DTensor.full_tensor``, all learners together, in the state_dict's order) and
  loads each into its own engine as it comes, so no learner holds the whole model beside its shard. The vLLM calls
  run with autocast off (sampling runs inside Lightning's training step, under bf16-mixed's autocast).
- The engine is always built with vLLM's sleep mode. ``generation.vllm_sleep`` (default true): it sleeps while the
  learner trains (level 2: its weights and KV cache are freed, training gets the memory back); it wakes its weights
  before the load, then its KV cache before sampling. Level 2 keeps no weights, so the policy is loaded before every
  sampling (it changes between rollout batches anyway). false: it stays awake between rollout batches. Either way it
  sleeps once training ends (``rest``), so the final validation and lm-eval have the memory back.
- Sampling returns what a generator process's does (ids, prompt mask, width, the sampler's log-probs), so the
  importance-sampling correction covers vLLM's numerics against the learner's; plus the seconds it took:
  ``weight_sync_s`` (logged as ``time/weight_sync_s``) is waking the weights (vllm_sleep) and the load;
  ``generation_s`` (``time/generation_s``) is waking the KV cache, sampling, and falling asleep again.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import numpy
import torch

from hydralign.rollout_workers.channel import full_tensors

SLEEP_LEVEL = 2  # discard the weights and the KV cache (the weights are loaded again before every sampling)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(rank: int, local_rank: int, world: int, environ: Mapping[str, str],
                 free_port: Callable[[], int] = _free_port) -> dict[str, str]:
    """The variables vLLM's external launcher reads for this learner (``RANK``, ``LOCAL_RANK``: its GPU,
    ``WORLD_SIZE``), and a rendezvous (``MASTER_ADDR``, ``MASTER_PORT``) only where ``environ`` has none: a run
    hydralign's launcher, torchrun or SLURM started keeps its own; a single process (whose world vLLM then makes,
    of size 1) gets a free local port."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world)}
    if not environ.get("MASTER_ADDR"):
        env["MASTER_ADDR"] = "127.0.0.1"
    if not environ.get("MASTER_PORT"):
        env["MASTER_PORT"] = str(free_port())
    return env


def needs_load(loaded: Optional[int], version: int) -> bool:
    """Whether the engine must take the policy (``loaded``: the version in it; None: none yet, or discarded by
    sleep)."""
    return loaded != version


@contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's random states (CPU, and ``device`` where it is a CUDA device) as they were
    before the block, whatever it seeded (vLLM's worker calls ``set_random_seed`` as it starts)."""
    device = torch.device(device)
    states = random.getstate(), numpy.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(states[0])
        numpy.random.set_state(states[1])


class ColocatedVLLM:
    """One learner's engine and what it samples with (``sampling``: pad id, stop ids, temperature, max new tokens)."""

    def __init__(self, llm: Any, sleep: bool, device: torch.device, sampling: tuple[int, list[int], float, int],
                 asleep: bool = False):
        self.llm, self.sleep, self.device, self.sampling = llm, sleep, torch.device(device), sampling
        self.asleep = asleep  # level 2: neither weights nor KV cache on the device
        self.loaded: Optional[int] = None  # the policy version (optimizer steps) in the engine

    @classmethod
    def start(cls, model: torch.nn.Module, gcfg: Any, rank: int, world: int, seed: int, max_model_len: int,
              device: torch.device, sampling: tuple[int, list[int], float, int]) -> ColocatedVLLM:
        """Every learner at once (vLLM makes its process groups over the learners' world). ``seed``: this learner's
        engine seed (each learner its own); ``device``: the learner's GPU (its index is vLLM's ``LOCAL_RANK``)."""
        from hydralign.rollout_workers.engines import vllm_engine

        device = torch.device(device)
        env = launcher_env(rank, device.index or 0, world, os.environ)
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with rng_kept(device), _autocast_off(device):
                llm = vllm_engine(model.config, gcfg, seed, max_model_len,
                                  distributed_executor_backend="external_launcher", enable_sleep_mode=True)
        finally:  # vLLM reads them while it starts; afterwards a single process must not look like a launched rank
            for k, v in before.items():  # (LOCAL_RANK says "torchrun started me" to hydralign's own launcher)
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        engine = cls(llm, bool(gcfg.vllm_sleep), device, sampling)
        if engine.sleep:
            engine.rest()  # training starts next: its memory back until the first rollout batch
        return engine

    def rest(self) -> None:
        """Asleep (level 2) unless it is: between rollout batches with vllm_sleep, and once training ends."""
        if not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep, self.loaded = True, None  # level 2 discarded the weights

    def sample(self, model: torch.nn.Module, version: int, prompts: list[list[int]], generations: int,
               seed: int) -> dict[str, Any]:
        """This learner's prompts, ``generations`` times each, by the policy at ``version`` (loaded first where the
        engine holds another: every learner calls this together, since under FSDP2 the load gathers). Seconds:
        ``weight_sync_s`` = waking the weights + the load; ``generation_s`` = waking the KV cache + sampling + the
        sleep after it."""
        from hydralign.rollout_workers.engines import load_vllm_weights, vllm_sample

        started = time.perf_counter()
        woke = self.asleep
        with _autocast_off(self.device):
            if woke:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # what training cached goes back to the device, for the engine's weights
                self.llm.wake_up(tags=["weights"])  # mapped again before anything is written into them
            if needs_load(self.loaded, version):
                load_vllm_weights(self.llm, full_tensors(model.state_dict().items(), self.device))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # the copies are done: the load's seconds are honest
                self.loaded = version
            loaded = time.perf_counter()
            if woke:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            pad_id, stop_ids, temperature, max_new = self.sampling
            got = vllm_sample(self.llm, prompts, generations, seed, pad_id, stop_ids, temperature, max_new)
            if self.sleep:
                self.rest()
        got.update(generation_s=time.perf_counter() - loaded, weight_sync_s=loaded - started, staleness=0)
        return got


def _autocast_off(device: torch.device) -> Any:
    """The vLLM calls run outside autocast: the rollout is made inside Lightning's training step, under bf16-mixed's
    autocast, which would otherwise recast vLLM's own matmuls."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
