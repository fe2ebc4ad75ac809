"""``optimizer.name``: the optimizer a run builds from its parameter groups. Imports no torch until
one is built (the plan checks the name without it).

    adamw        torch.optim.AdamW (foreach kernels): betas, eps, weight_decay
    adamw_fused  the same update in one fused kernel per step (CUDA, and CPU since torch 2.4): faster, same math
    sgd          torch.optim.SGD: momentum, nesterov, weight_decay (betas and eps unused)
    adafactor    torch.optim.Adafactor: factored second moments, far less optimizer memory than AdamW;
                 weight_decay (betas and eps unused; its own defaults otherwise)
"""

from __future__ import annotations

from typing import Any

from hydralign.config.choices import OPTIMIZERS


def build_optimizer(groups: list[dict], ocfg: Any, lr: float):
    """``groups``: torch parameter groups, each with its own ``weight_decay``; ``ocfg``: the optimizer config."""
    import torch

    name = ocfg.name
    if name in ("adamw", "adamw_fused"):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(ocfg.betas), eps=ocfg.eps, fused=name == "adamw_fused")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    raise ValueError(f"optimizer.name={name} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
