"""KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306), per example, in the dtype of its inputs.

KTO scores unpaired completions, each labelled desirable or undesirable. Every function takes *summed*
log-probabilities of each completion (``[B]``). Notation: ``pi``/``ref`` are the policy's and the
reference's log-probs, ``r = pi - ref`` the log-ratio, ``b`` is beta, ``z`` the reference point (a KL
estimate, detached and clamped at 0), ``w_d``/``w_u`` the desirable/undesirable weights. As TRL's
``KTOTrainer.kto_loss``:

    desirable:   w_d (1 - s(b (r - z)))
    undesirable: w_u (1 - s(b (z - r)))
    reward:      b r   (detached)

TRL concatenates the desirable losses before the undesirable ones; here ``losses[i]`` stays with example
``i``, so the batch mean is the same and per-example bookkeeping is easier.

Step-0 identities used by the tests (policy = reference, z = 0): losses = w / 2, rewards 0.
"""

from __future__ import annotations

from typing import Union

import torch

Tensor = torch.Tensor


def kl_estimate(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """TRL's reference point z: mean(pi - ref) over mismatched (prompt, completion) pairs (each prompt
    with another example's completion), clamped at 0 and detached; a 0-dim tensor.

    Under data parallelism TRL gathers the per-process means across ranks before clamping. To average over
    the whole global batch instead, all-reduce the sum and the count and use ``kl_estimate_from_sums``.
    """
    return (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()


def kl_estimate_from_sums(logratio_sum: Tensor, count: Union[Tensor, int]) -> Tensor:
    """z = max(0, sum(pi - ref) / count), detached: the same estimate from a (possibly all-reduced) sum of
    KL-pair log-ratios and their number, which must be > 0 (0 gives NaN)."""
    return (logratio_sum / count).clamp(min=0).detach()


def kto_loss(policy_logps: Tensor, reference_logps: Tensor, labels: Tensor, kl: Tensor, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-example losses [B] and rewards [B] = b (pi - ref), detached, in batch order.

    ``labels`` [B] is bool (True = desirable); ``kl`` is the 0-dim reference point z, already detached
    and clamped at 0 by the caller (see ``kl_estimate``): it is used as given, never re-clamped.
    """
    if kl.dim() != 0:
        raise ValueError(f"kl must be a 0-dim tensor, got shape {tuple(kl.shape)}")
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be a bool tensor (True = desirable), got {labels.dtype}")
    logratio = policy_logps - reference_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio)))
    return torch.where(labels, desirable, undesirable), beta * logratio.detach()
