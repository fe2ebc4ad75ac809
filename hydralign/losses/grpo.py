"""GRPO's pieces (Shao et al. 2024; names follow TRL's GRPOConfig): group-normalized advantages, the
clipped policy-gradient loss per token with clip-higher (DAPO), the k3 KL estimate to the reference,
and the three aggregations, returned as SUMS with their unit so that one optimizer step's loss is its
sum over the whole accumulated, all-device mini-batch divided once by the unit count (DESIGN.md
section 5). Pure tensor functions, no module state.

How each aggregation maps onto ``(loss_sum, unit_count)`` for a micro-batch of B completions:

- ``grpo``: each completion's token losses are averaged over its own completion tokens, then averaged
  over completions: ``loss_sum = sum_i mean_t(l_it)``, ``unit_count = B`` (sequences; a completion
  whose mask is empty adds 0 to the sum and still counts, as in TRL).
- ``dapo``: token mean over the whole mini-batch: ``loss_sum = sum_it l_it``, ``unit_count`` = the
  completion tokens in the mask (tokens). Dividing the mini-batch's sum once by its token count is
  DAPO's token-level normalization, whatever the split into micro-batches and devices.
- ``dr_grpo``: a constant denominator: ``loss_sum = sum_it l_it``, ``unit_count = B x
  max_completion_length`` (Dr. GRPO: no length bias from a per-sequence mean).
"""

from __future__ import annotations

from typing import Optional

import torch

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """rewards [P x G] (the G samples of each prompt adjacent) -> advantages: reward minus its group's
    mean, divided by the group's std (``group``), the whole batch's std (``batch``) or nothing
    (``none``, Dr. GRPO). Stds are unbiased (torch's default), as TRL's."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards}; choose from {SCALE_REWARDS}")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards are not whole groups of num_generations={num_generations}")
    grouped = rewards.view(-1, num_generations)
    adv = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1) if num_generations > 1 else \
            torch.zeros_like(adv)
        adv = adv / (std + STD_EPS)
    elif scale_rewards == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
        adv = adv / (std + STD_EPS)
    return adv


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) (Schulman): exp(r - p) - (r - p) - 1 >= 0."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def per_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                   epsilon: float = 0.2, epsilon_high: Optional[float] = None,
                   ref_logps: Optional[torch.Tensor] = None, beta: float = 0.0,
                   is_weight: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """logps, old_logps, ref_logps, is_weight [B, T]; advantages [B]. Returns (loss per token, clipped per token
    (bool: the clip bound is active and its gradient zero), KL per token or None). The ratio is clipped
    to [1 - epsilon, 1 + epsilon_high] (epsilon_high None: epsilon); the policy-gradient term is multiplied by
    ``is_weight`` (``importance_weights``: the sampler was not the learner), then KL added with ``beta`` (as TRL)."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv)
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
    if is_weight is not None:
        loss = loss * is_weight.detach()
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference's log-probs")
        kl = k3_kl(logps, ref_logps)
        loss = loss + beta * kl
    return loss, clipped, kl


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str,
              max_completion_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """token_loss, mask [B, T] -> (loss_sum, unit_count) of this micro-batch (see the module docstring)."""
    mask = mask.to(token_loss.dtype)
    per_seq = (token_loss * mask).sum(dim=1)
    if loss_type == "grpo":
        return (per_seq / mask.sum(dim=1).clamp(min=1.0)).sum(), torch.tensor(float(mask.shape[0]))
    if loss_type == "dapo":
        return per_seq.sum(), mask.sum().detach()
    if loss_type == "dr_grpo":
        return per_seq.sum(), torch.tensor(float(mask.shape[0] * max_completion_length))
    raise ValueError(f"loss_type={loss_type}; choose from {LOSS_TYPES}")


def unit_count(mask: torch.Tensor, loss_type: str, max_completion_length: int) -> float:
    """The unit count of a set of completions (a whole mini-batch): what its loss sum is divided by."""
    if loss_type == "grpo":
        return float(mask.shape[0])
    if loss_type == "dapo":
        return float(mask.sum())
    if loss_type == "dr_grpo":
        return float(mask.shape[0] * max_completion_length)
    raise ValueError(f"loss_type={loss_type}; choose from {LOSS_TYPES}")


# --- off-policy correction: the sampler is not the learner --------------------------------------------------------
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def importance_weights(old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                       clip_max: float = 3.0, clip_min: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated / masked importance sampling between the engine that sampled (``sampler_logps``: a generator
    process, an older policy version, another engine's numerics) and the learner's policy at rollout time
    (``old_logps``), as TRL's ``vllm_importance_sampling_mode`` (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"). old_logps, sampler_logps, mask [B, T] -> (weight [B, T] to
    multiply each token's loss by (detached), raw ratio [B, T], clipped [B, T] bool: the bound acted).

    - ``token_*``: ratio per token, exp(old - sampler);
    - ``sequence_*``: one ratio per completion, exp(sum over its loss tokens of old - sampler), on all its tokens;
    - ``*_truncate``: the ratio clamped to [clip_min, clip_max]; ``*_mask``: 0 outside [clip_min, clip_max].
    Tokens outside ``mask`` get weight 1 and never count as clipped."""
    if mode not in IS_MODES:
        raise ValueError(f"importance sampling mode={mode}; choose from {IS_MODES}")
    m = mask.to(old_logps.dtype)
    diff = (old_logps.detach() - sampler_logps.detach()) * m
    if mode.startswith("sequence"):
        diff = diff.sum(dim=1, keepdim=True).expand_as(old_logps)
    ratio = torch.exp(diff)
    outside = ((ratio > clip_max) | (ratio < clip_min)) & mask.bool()
    if mode.endswith("truncate"):
        weight = ratio.clamp(min=clip_min, max=clip_max)
    else:
        weight = torch.where(outside, torch.zeros_like(ratio), ratio)
    weight = torch.where(mask.bool(), weight, torch.ones_like(weight))
    return weight, ratio, outside
