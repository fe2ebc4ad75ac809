"""``prompts``: online RL trains on prompts and samples its own completions; each record's assistant turn is the
verifier's answer key, and validation still scores the reference answers' loss (GRPO)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from hydralign.data.kind import DataKind
from hydralign.data.rollouts import RolloutMicroBatches, RolloutSchedule


class PromptsKind(DataKind):
    name = "prompts"

    def train_items(self, examples: list, prompts: Callable[[], list]) -> list:
        return prompts()

    def train_batches(self, data: Any, plan: Any, rank: int) -> Dataset:
        rollouts = RolloutSchedule(len(data.train_examples), plan.rollout, rank, plan.seed)
        return RolloutMicroBatches(data.train_examples, rollouts, plan.total_steps)


KIND = PromptsKind()
