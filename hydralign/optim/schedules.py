"""Learning-rate multipliers as pure functions of the optimizer step (no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_factor(step: int, name: str, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0,
              milestones: Sequence[float] = (0.8, 0.9), factors: Sequence[float] = (0.316, 0.1)) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based).

    warmup: linear from 1/(warmup+1) of peak to peak. Then constant | linear / cosine decay to
    ``min_lr_ratio`` x peak at the last step | multistep: peak x factors[i] once ``step`` reaches
    milestones[i] x total_steps (DeepSeek LLM: 31.6% at 80%, 10% at 90%).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if name == "constant":
        return 1.0
    if name == "multistep":
        factor = 1.0
        for m, f in zip(milestones, factors):
            if step >= m * total_steps:
                factor = f
        return factor
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    if name == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if name == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")
