"""Online RL's training batches: which prompts each rollout batch samples, and which slice of it each
micro-batch trains on. A pure function of (seed, step), like ``WindowSchedule``: a resumed run draws the
same prompts.

Rollout batch q takes ``prompts_per_rollout`` prompts from a per-epoch permutation (reshuffled every epoch);
rank r samples the r-th contiguous share of them, ``generations_per_prompt`` times each (groups stay on one
rank). Its ``steps_per_rollout`` optimizer steps are ``num_iterations`` passes over ``num_mini_batches``
mini-batches; rank r's k-th micro-batch of a step is local samples ``[mini x local_mini + k x micro, + micro)``.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from hydralign.data.batching import EpochPermutation
from hydralign.data.tokenize import GenerationExample
from hydralign.plan.rollout import RolloutPlan
from hydralign.rewards import source_of


class RolloutSchedule:
    def __init__(self, num_prompts: int, rollout: RolloutPlan, rank: int, seed: int):
        self.n, self.r, self.rank, self.seed = num_prompts, rollout, rank, seed
        self.rollouts_per_epoch = num_prompts // rollout.prompts_per_rollout
        if self.rollouts_per_epoch < 1:
            raise ValueError(f"{num_prompts} prompts cannot fill one rollout batch of {rollout.prompts_per_rollout}")
        self._permutation = EpochPermutation(num_prompts, seed)

    def prompts(self, rollout_index: int) -> list[int]:
        """This rank's prompt indices for rollout batch ``rollout_index``."""
        epoch, w = divmod(rollout_index, self.rollouts_per_epoch)
        p, local = self.r.prompts_per_rollout, self.r.prompts_per_device
        window = self._permutation(epoch)[w * p:(w + 1) * p]
        return window[self.rank * local:(self.rank + 1) * local].tolist()

    def micro_batch(self, index: int) -> dict:
        """index counts this rank's micro-batches from the start of training."""
        r = self.r
        step, k = divmod(index, r.grad_accum_per_mini_batch)
        rollout_index, in_rollout = divmod(step, r.steps_per_rollout)
        iteration, mini = divmod(in_rollout, r.num_mini_batches)
        start = mini * r.mini_batch_samples_per_device + k * r.micro_batch_samples_per_device
        return {"rollout": rollout_index, "iteration": iteration, "mini": mini, "first_step": in_rollout == 0,
                "samples": (start, start + r.micro_batch_samples_per_device),
                "window_last": k == r.grad_accum_per_mini_batch - 1,
                "epoch": rollout_index / self.rollouts_per_epoch}


class RolloutMicroBatches(Dataset):
    """Item i = this rank's i-th micro-batch of training: where it sits in the hierarchy, and the prompts
    (token ids), answer keys and sources (``hydralign.rewards.AnswerKey``; None without one) of its rollout
    batch (the module samples them once per rollout)."""

    def __init__(self, prompts: list[GenerationExample], schedule: RolloutSchedule, total_steps: int):
        self.prompts, self.schedule = prompts, schedule
        self.length = total_steps * schedule.r.grad_accum_per_mini_batch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        item = self.schedule.micro_batch(index)
        chosen = [self.prompts[i] for i in self.schedule.prompts(item["rollout"])]
        item.update(prompt_ids=[e.prompt_ids for e in chosen], references=[str(e.reference) for e in chosen],
                    sources=[source_of(e.reference) for e in chosen], split="train")
        return item
