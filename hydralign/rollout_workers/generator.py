"""A generator process (``python -m hydralign.rollout_workers.generator <run_dir>/launch/config.yaml``, started by
hydralign's launcher beside the learners): it builds the policy's architecture, waits for learner 0's start message,
and for every rollout batch from the start on takes the weights the ``SyncSchedule`` names, samples the prompts of
each learner it serves (learner r is served by generator r mod N) with the seed of (seed, rollout batch, learner),
and posts each learner's share with its sampler log-probs, policy version and generation seconds."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from hydralign.rollout_workers.channel import GENERATORS_ENV, LEARNERS_ENV, RANK_ENV, Channel
from hydralign.rollout_workers.schedule import SyncSchedule


def _engine(cfg: Any, hello: dict, tokenizer: Any, device: torch.device) -> Any:
    from hydralign.models import build_model

    plan, r = hello["plan"], hello["plan"].rollout
    model = build_model(cfg.model, tokenizer, cfg.seed, cfg.peft)
    temperature = float(cfg.method.temperature)
    if r.backend == "vllm":
        from hydralign.rollout_workers.engines import VLLMEngine

        longest = max(len(p) for p in hello["prompts"])
        return VLLMEngine(model.config, cfg.generation, tokenizer.pad_token_id, hello["stop_ids"], temperature,
                          r.max_completion_length, longest, plan.seed, hello["layout"])
    from hydralign.rollout_workers.engines import HFEngine

    return HFEngine(model, device, tokenizer.pad_token_id, hello["stop_ids"], temperature, r.max_completion_length,
                    r.micro_batch_samples_per_device, hello["layout"])


def serve(cfg: Any) -> None:
    from hydralign.data.rollouts import RolloutSchedule
    from hydralign.generation import rollout_seed
    from hydralign.models import tokenizer_and_template

    g, gens, learners = int(os.environ[RANK_ENV]), int(os.environ[GENERATORS_ENV]), int(os.environ[LEARNERS_ENV])
    timeout = float(cfg.hardware.get("dist_timeout_min") or 30) * 60
    # the learners may take hours to start (a large mixture's cache, loading, sharding): the launcher ends this
    # process if they fail, so waiting for them to open the store is bounded by their own start-up
    gpu = cfg.hardware.accelerator == "gpu"
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")  # the launcher shows it its own GPU only
    if gpu:
        torch.cuda.set_device(device)  # NCCL's communicator for the weights is made on the current device
    channel = Channel.open(None, timeout_s=timeout, connect_timeout_s=7 * 24 * 3600.0, device=device)
    hello = channel.take("hello", keep=True)
    plan = hello["plan"]
    r = plan.rollout
    tokenizer, _ = tokenizer_and_template(cfg.model)
    engine = _engine(cfg, hello, tokenizer, device)
    sync = SyncSchedule(r.steps_per_rollout, r.max_staleness, r.weight_sync_steps, r.total_rollouts,
                        hello["start_version"])
    prompts = hello["prompts"]
    served = {rank: RolloutSchedule(len(prompts), r, rank, plan.seed) for rank in range(learners) if rank % gens == g}
    version, synced_s = -1, 0.0
    for q in range(sync.start_rollout, r.total_rollouts):
        while version < sync.version_for(q):
            started = time.perf_counter()
            version, weights = channel.recv_weights(hello["layout"], engine.targets())
            engine.load(weights)  # each tensor taken as it is received
            weights.finish()
            if gpu:
                torch.cuda.synchronize(device)  # the load's copies are done: its seconds are honest
            synced_s += time.perf_counter() - started
        for rank, schedule in served.items():
            started = time.perf_counter()
            got = engine.sample([prompts[i] for i in schedule.prompts(q)], r.generations_per_prompt,
                                rollout_seed(plan.seed, q, rank))
            got.update(rollout=q, version=version, generation_s=time.perf_counter() - started,
                       generator_sync_s=synced_s)
            channel.post(f"rollout/{q}/{rank}", got)
            synced_s = 0.0


def main(config_file: str) -> int:
    from omegaconf import OmegaConf

    index = int(os.environ[LEARNERS_ENV]) + int(os.environ[RANK_ENV])  # its place among the job's processes
    error_file = Path(config_file).parent / f"rank{index}.error"
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))  # the job ended (learners done, or one failed)
    for stop in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):  # a stop signal is the learners' to act on (they
        signal.signal(stop, signal.SIG_IGN)  # checkpoint and end; the launcher then ends this process with SIGHUP)
    try:
        serve(OmegaConf.load(config_file))
        return 0
    except SystemExit:
        raise
    except BaseException as err:
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        error_file.write_text(f"generator {os.environ.get(RANK_ENV)}: {text}")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
