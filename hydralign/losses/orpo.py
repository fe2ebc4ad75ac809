"""ORPO's odds-ratio term (Hong et al. 2024, https://arxiv.org/abs/2403.07691), per pair, in the dtype of
its inputs.

Every function takes *length-averaged* log-probabilities of each completion (``[B]``, one value per pair,
strictly negative): ``l_w`` for the chosen (winning) completion, ``l_l`` for the rejected one, so that
``p = exp(l)`` is the per-token geometric-mean probability. ``b`` is beta (the paper's lambda). With
odds(p) = p / (1 - p), the paper's eq. 4 and 7 become, as in TRL's ``ORPOTrainer.odds_ratio_loss``,

    log_odds = log odds(p_w) - log odds(p_l) = (l_w - l_l) - (log(1 - e^l_w) - log(1 - e^l_l))
    loss     = -b log s(log_odds)

The full ORPO objective is ``nll_w + loss.mean()``, the SFT negative log-likelihood of the chosen
completions added by the caller. TRL returns ``b log s(log_odds)`` and subtracts its mean; here the sign
is folded in, so ``losses`` is the (positive) quantity to minimize.

Step-0 identity used by the tests: l_w = l_l gives log_odds = 0, so loss = b ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_LN_HALF = -math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0, stable at both ends (Maechler 2012): log(-expm1(x)) for x > -ln 2,
    log1p(-exp(x)) below. Each branch sees its input clamped to its own side, so neither yields inf
    (or a NaN gradient through ``torch.where``). x = 0 gives -inf: a log-prob must be strictly negative."""
    near_zero = x > _LN_HALF
    small = torch.log(-torch.expm1(x.clamp(min=_LN_HALF)))
    large = torch.log1p(-torch.exp(x.clamp(max=_LN_HALF)))
    return torch.where(near_zero, small, large)


def log_odds(chosen_logps: Tensor, rejected_logps: Tensor) -> Tensor:
    """Per-pair log odds ratio [B]: (l_w - l_l) - (log(1 - e^l_w) - log(1 - e^l_l)).
    TRL logs its batch mean as ``log_odds_chosen``."""
    return (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, beta: float) -> tuple[Tensor, Tensor]:
    """Odds-ratio losses [B] = -b log s(log_odds) (positive, to minimize; differentiable) and
    log_odds_ratio [B] = log s(log_odds), detached, per pair: TRL's logged ``log_odds_ratio`` is its
    batch mean (and TRL's ``losses`` is b * log_odds_ratio, sign flipped). At l_w = l_l: b ln 2 and -ln 2.
    """
    ratio = F.logsigmoid(log_odds(chosen_logps, rejected_logps))
    return -beta * ratio, ratio.detach()


def orpo_rewards(chosen_logps: Tensor, rejected_logps: Tensor, *, beta: float) -> tuple[Tensor, Tensor]:
    """TRL's ORPO rewards, detached: (b l_w, b l_l) on the length-averaged log-probs, [B] each."""
    return beta * chosen_logps.detach(), beta * rejected_logps.detach()
