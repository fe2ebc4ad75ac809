"""Knowledge-distillation losses, pure functions computed in fp32 (fp64 stays fp64) whatever the logits' dtype.

Notation: at one target position the student's next-token distribution is ``q`` (logits ``s``), the
teacher's is ``p`` (logits ``t``); with temperature ``T`` both are softmaxes of logits / T.
Every loss returns the **sum** over the masked positions, never a mean: the method divides once by the
optimizer step's token count (DESIGN.md section 5), so the batch split cannot change the gradient.

Shapes: logits ``[..., V]`` already aligned (position i of both predicts the same next token), ``mask``
``[...]`` bool: True where a loss is taken. Masked-out positions contribute exactly 0.

Convention for the divergence direction (as TRL's GKDTrainer, ``generalized_jsd_loss``):

    forward KL   KL(p || q) = sum_v p (log p - log q)     mean-seeking: q covers all of p's modes
    reverse KL   KL(q || p) = sum_v q (log q - log p)     mode-seeking: q puts mass where p has it
    JSD(beta)    beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
                 (GKD eq. 1). beta = 0 is defined as forward KL and beta = 1 as reverse KL exactly
                 (JSD(beta) / beta -> KL(p || q) as beta -> 0, and JSD(beta) / (1 - beta) -> KL(q || p)
                 as beta -> 1; at the endpoints themselves JSD(beta) is 0).

Unlike torchtune's ``ForwardKLLoss`` (the cross-entropy -sum_v p log q, which differs from KL(p || q) by
the teacher's entropy, constant for the student) these are divergences: identical distributions give 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")


def _full(x: Tensor) -> Tensor:
    """bf16 / fp16 logits in fp32 (the softmax of a large vocabulary needs it); fp32 / fp64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float
               ) -> tuple[Tensor, Tensor]:
    """(log q, log p) of the masked positions only, [M, V] fp32, at temperature T."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    s = _full(student_logits[mask]) / temperature
    t = _full(teacher_logits[mask]) / temperature
    return F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per row [M]: sum_v a (log a - log b); a row's zero-probability entries add 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(dim=-1)


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Token-level KD (Hinton et al. 2015, https://arxiv.org/abs/1503.02531): sum over masked positions of
    T^2 KL(p_T || q_T). The T^2 factor (Hinton section 2) keeps the gradient's size independent of T: soft
    targets' gradients scale as 1 / T^2. TRL's GKD divides the logits by T without it; at T = 1 they agree."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, mask, temperature)
    return temperature ** 2 * _kl(log_p, log_q).sum()


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Token-level reverse KL, sum over masked positions of T^2 KL(q_T || p_T) (mode-seeking; MiniLLM,
    Gu et al. 2024, https://arxiv.org/abs/2306.08543, argues for it when the student is much smaller).
    Exact over the vocabulary at each position of the given sequences (no sampling); T^2 as ``forward_kl``."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, mask, temperature)
    return temperature ** 2 * _kl(log_q, log_p).sum()


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, beta: float = 0.5,
                    temperature: float = 1.0) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, https://arxiv.org/abs/2306.13649,
    eq. 1), TRL's convention: sum over masked positions of T^2 [beta KL(p || m) + (1 - beta) KL(q || m)],
    m = beta p + (1 - beta) q; beta = 0 is forward KL, beta = 1 reverse KL (module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1]")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature)
    log_q, log_p = _log_probs(student_logits, teacher_logits, mask, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    jsd = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    return temperature ** 2 * jsd.sum()


def kd_loss(name: str, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0,
            beta: float = 0.5) -> Tensor:
    """``name``: forward_kl | reverse_kl | jsd (``beta``)."""
    if name == "forward_kl":
        return forward_kl(student_logits, teacher_logits, mask, temperature)
    if name == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, mask, temperature)
    if name == "jsd":
        return generalized_jsd(student_logits, teacher_logits, mask, beta, temperature)
    raise ValueError(f"KD loss {name!r} is unknown; choose from {', '.join(KD_LOSSES)}")


def argmax_agreement(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """Number of masked positions where the student's and the teacher's most likely tokens agree."""
    return (student_logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)).sum()


# --- MiniLLM -------------------------------------------------------------------------------------------
# Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models", https://arxiv.org/abs/2306.08543
# (code: github.com/microsoft/LMOps/tree/main/minillm). The student q minimizes the sequence-level reverse KL
# KL(q || p) by policy gradient on its own samples y, with the per-token reward r_t = log p(y_t | y_<t, x) -
# log q(y_t | y_<t, x). Section 2.2's three refinements are the functions below:
#   single-step decomposition: the reward of step t itself enters exactly, as the gradient of
#     KL(q(. | y_<t, x) || p(. | y_<t, x)) over the whole vocabulary; only the future rewards R_{t+1} go
#     through the (high-variance) score-function term -R_{t+1} grad log q(y_t);
#   length normalization: R_{t+1} is the *mean* of r_{t+1} .. r_T, not their sum (long samples would
#     otherwise dominate, and short ones be favoured);
#   teacher-mixed sampling: y_t is drawn from p~ = alpha p + (1 - alpha) q, and every term is weighted by
#     the single-step importance weight w_t = q(y_t) / p~(y_t) (the paper's approximation of the product).
# The paper trains with PPO's clipped ratio over several updates per batch of samples; here each sample is
# used once, in the step that drew it, so that ratio is 1 and clipping never engages: the gradient is the
# one below. LMOps also whitens the advantages over the batch; that would couple the samples of a
# micro-batch (the split would change the gradient), so it is left out.


def token_log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] per position: logits [..., V], tokens [...] (>= 0) -> [...] (fp32 or fp64)."""
    return torch.gather(F.log_softmax(_full(logits), dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def future_mean_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Length-normalized return R_{t+1}: the mean of the masked rewards after t in the same row, 0 where
    none follows. rewards, mask: [B, T] (the mask is a row's contiguous generated span)."""
    r = rewards * mask
    after = r.flip(-1).cumsum(-1).flip(-1) - r  # sum of r_{t'} for t' > t
    count = mask.float().flip(-1).cumsum(-1).flip(-1) - mask.float()
    return torch.where(count > 0, after / count.clamp(min=1), torch.zeros_like(after)) * mask


def mixture_weights(student_logps: Tensor, teacher_logps: Tensor, alpha: float) -> Tensor:
    """w_t = q(y_t) / ((1 - alpha) q(y_t) + alpha p(y_t)) = 1 / ((1 - alpha) + alpha exp(log p - log q));
    1 when alpha = 0 (pure student sampling)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1)")
    return 1.0 / ((1 - alpha) + alpha * torch.exp(teacher_logps - student_logps))


def minillm_token_terms(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, mask: Tensor,
                        teacher_mix: float = 0.0) -> dict[str, Tensor]:
    """Per-position MiniLLM terms on sampled sequences, each [B, T] and 0 where ``mask`` is False.

    student_logits, teacher_logits: [B, T, V] aligned with ``tokens`` [B, T] (position t predicts
    tokens[t]); ``mask`` marks the sampled (generated) positions.
      ``loss``        w_t (KL_t - A_t log q(y_t)) with w_t and A_t = R_{t+1} constants: its gradient is
                      MiniLLM's (single-step + length-normalized long-term part, teacher-mix weighted);
      ``reverse_kl``  KL_t = KL(q_t || p_t) over the vocabulary (what the student minimizes; with grad);
      ``weighted_kl`` w_t KL_t (the loss's value without the zero-mean score-function term);
      ``reward``      r_t = log p(y_t) - log q(y_t); ``advantage`` A_t; ``weight`` w_t.
    """
    safe = torch.where(mask, tokens, torch.zeros_like(tokens))
    log_q_all = F.log_softmax(_full(student_logits), dim=-1)
    log_p_all = F.log_softmax(_full(teacher_logits), dim=-1)
    m = mask.to(log_q_all.dtype)
    kl = _kl(log_q_all, log_p_all) * m
    log_q = torch.gather(log_q_all, -1, safe.unsqueeze(-1)).squeeze(-1) * m
    log_p = torch.gather(log_p_all, -1, safe.unsqueeze(-1)).squeeze(-1) * m
    with torch.no_grad():
        reward = (log_p - log_q) * m
        advantage = future_mean_rewards(reward, mask)
        weight = mixture_weights(log_q, log_p, teacher_mix) * m
    return {"loss": weight * (kl - advantage * log_q), "reverse_kl": kl, "weighted_kl": weight * kl,
            "reward": reward, "advantage": advantage, "weight": weight}


def per_sequence_share(values: Tensor, mask: Tensor, data_tokens: Tensor) -> Tensor:
    """Quantities on *generated* tokens, in the unit of the step's normalizer (the data's loss tokens): row i
    contributes d_i x (mean of its masked values), d_i its data tokens, so the step's sum / the step's data
    tokens is a data-token-weighted mean of per-sequence means (the plain token mean when every generated
    length equals its data length). A row without data tokens (a filler) contributes 0; each row's share
    depends on that row alone, so the split into micro-batches cannot change it. values, mask [B, T] ->
    [B]."""
    m = mask.to(values.dtype)
    return data_tokens.to(values.dtype) * (values * m).sum(-1) / m.sum(-1).clamp(min=1)
