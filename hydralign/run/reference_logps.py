"""Reference log-probs precomputed once (``method.precompute_ref``: DPO, KTO) from the initial policy with its
adapters disabled, before any checkpoint is restored; cached on disk, shared by a sweep (``methods.reference_cache``).
Under FSDP2 only rank 0 holds whole weights: the other ranks wait for its cache file."""

from __future__ import annotations

import os
import time
from typing import Any

from omegaconf import DictConfig

from hydralign.plan.core import Plan
from hydralign.run.references import rank_zero


def precomputed_reference(cfg: DictConfig, plan: Plan, policy: Any, data: Any) -> tuple[dict, dict]:
    """Reference log-probs of every train and val pair, from the cache or computed now with the
    initial policy (adapters disabled), before any checkpoint is restored: that policy is the reference."""
    import torch

    from hydralign.methods import reference_cache as rc

    key, described = rc.cache_key(cfg, data)
    sizes = {s: len(getattr(data, f"{s}_examples")) for s in rc.SPLITS}
    if plan.accelerator == "gpu":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(plan.precision)

    def compute() -> dict:
        policy.to(device)
        try:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return {s: rc.compute_logps(policy, getattr(data, f"{s}_examples"), data.tokenizer.pad_token_id,
                                            cfg.eval.batch_size, device) for s in rc.SPLITS}
        finally:
            policy.to("cpu")

    if plan.strategy == "fsdp" and not rank_zero():  # FSDP2: this rank's policy is an empty skeleton
        return wait_for_rank_zero(lambda not_ready: rc.load_or_compute(rc.default_cache_dir(cfg), key, described,
                                                                        sizes, not_ready))
    return rc.load_or_compute(rc.default_cache_dir(cfg), key, described, sizes, compute)


class _NotReady(Exception):
    pass


def wait_for_rank_zero(load: Any, timeout_s: float = 3600.0) -> Any:
    """``load(compute)`` until rank 0 has written what this rank cannot compute itself."""
    def not_ready() -> dict:
        raise _NotReady

    deadline = time.time() + timeout_s
    while True:
        try:
            return load(not_ready)
        except _NotReady:
            if time.time() > deadline:
                raise TimeoutError(f"rank 0 wrote no reference log-probs within {timeout_s:.0f} s") from None
            time.sleep(min(1.0, timeout_s))
