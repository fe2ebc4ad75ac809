"""Preference losses (DPO and its family), per pair, in the dtype of their inputs.

Every function takes *summed* log-probabilities of each completion (``[B]``, one value per pair) and
returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``. Names follow TRL's ``loss_type``
where they overlap, so configs carry over. Notation: ``pi_w``/``pi_l`` are the policy's log-probs of
the chosen (winning) and rejected (losing) completion, ``ref_w``/``ref_l`` the reference's, ``b``
is beta, ``eps`` the label smoothing, and the DPO margin is

    h = (pi_w - ref_w) - (pi_l - ref_l)

Length-normalized losses (``ipo``, ``sigmoid_norm``, ``simpo``, ``sft``) divide every log-prob by its
completion's token count first (``chosen_lengths``/``rejected_lengths``, required for them), in the
loss only.

Implicit rewards (the ``rewards/*`` metrics) follow TRL's ``DPOTrainer`` for every loss type that has a
reference: ``b (pi_w - ref_w)`` and ``b (pi_l - ref_l)`` on the *summed* log-probs, whatever the loss
(TRL computes them once, after its loss loop, as ``self.beta * chosen_logratios``, where the log-ratios
are token sums); so ``ipo``/``sigmoid_norm`` (and ``sft`` given a reference) report unnormalized rewards
while their losses stay length-averaged. Reference-free types have no log-ratio: ``simpo`` (and ``sft``
without a reference) report ``b`` times the length-averaged policy log-prob, as TRL's ``CPOTrainer``
does for ``loss_type="simpo"`` (``b * policy_logps`` with ``average_log_prob=True``); TRL's
``DPOTrainer`` has no reference-free loss.

Step-0 identities used by the tests (policy = reference, so h = 0): sigmoid = ln 2, hinge = 1,
ipo = 1 / (4 b^2), robust = ln 2 for any eps < 1/2, rewards 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F

from hydralign.losses.preference_types import LOSS_TYPES

Tensor = torch.Tensor


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """-(1 - eps) log s(z) - eps log s(-z): the binary cross-entropy of label 1 smoothed by eps."""
    return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


def sigmoid_loss(h: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, eq. 7): -log s(b h).
    With eps > 0 it is conservative DPO (cDPO, https://ericmitchell.ai/cdpo.pdf):
    -(1 - eps) log s(b h) - eps log s(-b h). At h = 0: ln 2."""
    return _smoothed_sigmoid(beta * h, label_smoothing)


def robust_loss(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409, eq. 10): an unbiased loss
    under preference-label flips with rate eps: [-(1 - eps) log s(b h) + eps log s(-b h)] / (1 - 2 eps).
    At h = 0: (1 - 2 eps) ln 2 / (1 - 2 eps) = ln 2."""
    return (-F.logsigmoid(beta * h) * (1 - label_smoothing) + F.logsigmoid(-beta * h) * label_smoothing) / (
        1 - 2 * label_smoothing)


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """SLiC-HF hinge (Zhao et al. 2023, https://arxiv.org/abs/2305.10425, with margin 1 / b as in
    TRL): max(0, 1 - b h). At h = 0: 1."""
    return torch.relu(1 - beta * h)


def ipo_loss(h_norm: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, https://arxiv.org/abs/2310.12036, eq. 17): (h - 1 / (2 b))^2 on
    length-averaged log-probs (as TRL). At h = 0: 1 / (4 b^2)."""
    return (h_norm - 1 / (2 * beta)) ** 2


def simpo_loss(avg_w: Tensor, avg_l: Tensor, beta: float, gamma_beta_ratio: float,
               label_smoothing: float = 0.0) -> Tensor:
    """SimPO (Meng et al. 2024, https://arxiv.org/abs/2405.14734, eq. 6), reference-free:
    -log s(b (avg_w - avg_l) - gamma), gamma = gamma_beta_ratio * b, avg = log-prob / length."""
    return _smoothed_sigmoid(beta * (avg_w - avg_l - gamma_beta_ratio), label_smoothing)


def _single(loss_type: str, pw: Tensor, pl: Tensor, rw: Optional[Tensor], rl: Optional[Tensor], beta: float,
            eps: float, gamma_beta_ratio: float, lw: Optional[Tensor], ll: Optional[Tensor]
            ) -> tuple[Tensor, Tensor, Tensor]:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; choose from {', '.join(LOSS_TYPES)}")
    needs_ref, needs_len = LOSS_TYPES[loss_type]
    if needs_ref and (rw is None or rl is None):
        raise ValueError(f"loss_type={loss_type} needs reference log-probs")
    has_ref = rw is not None and rl is not None
    # Rewards on the summed log-probs (TRL's DPOTrainer, any loss type), taken before the normalization below.
    ref_rewards = (beta * (pw - rw).detach(), beta * (pl - rl).detach()) if has_ref else None
    if needs_len:
        if lw is None or ll is None:
            raise ValueError(f"loss_type={loss_type} needs chosen_lengths and rejected_lengths")
        pw, pl = pw / lw, pl / ll
        if has_ref:
            rw, rl = rw / lw, rl / ll
    if loss_type == "simpo":  # reference-free: b * avg log-prob (TRL's CPOTrainer), even if a reference is given
        return simpo_loss(pw, pl, beta, gamma_beta_ratio, eps), beta * pw.detach(), beta * pl.detach()
    if loss_type == "sft":  # RPO's NLL term (Pang et al. 2024, https://arxiv.org/abs/2404.19733): -pi_w / |y_w|
        if ref_rewards is None:  # no reference: b * avg log-prob, as simpo
            return -pw, beta * pw.detach(), beta * pl.detach()
        return -pw, ref_rewards[0], ref_rewards[1]
    h = (pw - rw) - (pl - rl)
    if loss_type in ("sigmoid", "sigmoid_norm"):  # sigmoid_norm = open-instruct's dpo_norm
        losses = sigmoid_loss(h, beta, eps)
    elif loss_type == "robust":
        losses = robust_loss(h, beta, eps)
    elif loss_type == "hinge":
        losses = hinge_loss(h, beta)
    else:
        losses = ipo_loss(h, beta)
    return losses, ref_rewards[0], ref_rewards[1]


def preference_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Optional[Tensor], ref_rejected_logps: Optional[Tensor], *,
                    loss_type: Union[str, Sequence[str]], beta: float, label_smoothing: float = 0.0,
                    gamma_beta_ratio: float = 0.0, chosen_lengths: Optional[Tensor] = None,
                    rejected_lengths: Optional[Tensor] = None,
                    loss_weights: Optional[Sequence[float]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair losses [B] and implicit rewards [B] (chosen, rejected), detached.

    ``loss_type`` is one name or a list combined as sum_i w_i * loss_i (``loss_weights``, default all
    1); ``["sigmoid", "sft"]`` is RPO. Rewards come from the first non-``sft`` loss in the list (``sft``
    alone: its own): b (pi - ref) on the *summed* log-probs for every loss with a reference, the
    length-normalized ones included (TRL's DPOTrainer convention); b * length-averaged policy log-prob for
    the reference-free ``simpo`` and for ``sft`` without a reference. Lengths change the normalized
    losses, never the reference-based rewards.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ValueError("loss_type is empty")
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} values for {len(types)} loss types")
    total, rewards = None, None
    for name, w in zip(types, weights):
        losses, cr, rr = _single(name, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, beta, label_smoothing, gamma_beta_ratio, chosen_lengths,
                                 rejected_lengths)
        total = w * losses if total is None else total + w * losses
        if rewards is None or (name != "sft" and rewards[0] == "sft"):
            rewards = (name, cr, rr)
    return total, rewards[1], rewards[2]
