"""The learners' side of the generator processes: at the start of training learner 0 posts what the generators need
(the refined plan, the train prompts, the stop tokens, the policy version training starts from) and every learner
joins the first weight broadcast; after each optimizer step the learners broadcast where the ``SyncSchedule`` says;
at each rollout batch a learner takes the batch its generator sampled for it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from hydralign.rollout_workers.channel import Channel
from hydralign.rollout_workers.schedule import SyncSchedule


class RolloutClient:
    def __init__(self, channel: Channel, schedule: SyncSchedule, rank: int, log: Optional[Path]):
        self.channel, self.schedule, self.rank, self.log = channel, schedule, rank, log
        self.waited_s = 0.0  # the last sync: learner 0 idle until the generators could receive

    @classmethod
    def start(cls, model: torch.nn.Module, plan: Any, rank: int, start_version: int, prompts: list[list[int]],
              stop_ids: list[int], log: Optional[Path], timeout_s: float,
              device: torch.device = torch.device("cpu")) -> RolloutClient:
        """``device``: this learner's (a GPU on GPU hardware: learner 0 then broadcasts over NCCL)."""
        r = plan.rollout
        channel = Channel.open(learner_rank=rank, timeout_s=timeout_s, device=device)
        schedule = SyncSchedule(r.steps_per_rollout, r.max_staleness, r.weight_sync_steps, r.total_rollouts,
                                start_version)
        if rank == 0:
            from hydralign.distributed.generator_tasks import remember_store

            remember_store(channel.store, channel.generators)  # torchrun/srun tasks: told when the run ends
            layout = [(name, t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()]  # DTensor: global
            channel.post("hello", {"plan": plan, "prompts": prompts, "stop_ids": list(stop_ids),
                                   "start_version": start_version, "layout": layout})
            print(f"hydralign: {channel.generators} generator process(es) sample rollout batches "
                  f"{schedule.start_rollout}..{r.total_rollouts - 1}, up to {r.max_staleness} ahead of training, "
                  f"starting from policy version {start_version} (optimizer steps)", flush=True)
            if start_version and r.max_staleness:
                last = min(schedule.start_rollout + r.max_staleness, r.total_rollouts) - 1
                print(f"hydralign: resumed: rollout batches {schedule.start_rollout}..{last}, in flight when the run "
                      f"stopped (sampled with older weights), are discarded and sampled again from the restored "
                      f"weights (version {start_version}); from batch {last + 1} on, sampling is "
                      f"{r.max_staleness} batch(es) behind again", flush=True)
        client = cls(channel, schedule, rank, log)
        client.sync(model, start_version)
        return client

    def sync(self, model: torch.nn.Module, version: int) -> float:
        """Broadcast the weights if the schedule says so at ``version``; the seconds the transfer took (0 if not).
        The time learner 0 first waited for the generators to finish sampling is ``waited_s``, not counted here
        (other learners' waits, inside their gathers under FSDP2, are)."""
        self.waited_s = 0.0
        if not self.schedule.learners_send(version):
            return 0.0
        started = time.perf_counter()
        confirmed = self.channel.send_weights(iter(model.state_dict().items()), version)
        self.waited_s = self.channel.header_wait_s
        seconds = time.perf_counter() - started - self.waited_s
        if confirmed is not None and self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)  # (no launch/ folder where torchrun or srun started it)
            with open(self.log, "a") as fh:
                fh.write(json.dumps({"version": version, "sha256": confirmed,
                                     "generators": self.channel.generators}) + "\n")
        return seconds

    def take(self, rollout: int) -> tuple[dict[str, Any], float]:
        """This learner's share of rollout batch ``rollout`` and the seconds spent waiting for it."""
        started = time.perf_counter()
        got = self.channel.take(f"rollout/{rollout}/{self.rank}")
        got["staleness"] = self.schedule.staleness(rollout)
        return got, time.perf_counter() - started
