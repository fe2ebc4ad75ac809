"""Distillation losses against hand-derived fp64 values.

Worked example, a 3-token vocabulary at one position. The logits are log-probabilities, so the softmax
gives them back: teacher p = (1/2, 1/4, 1/4), student q = (1/8, 1/8, 3/4).

    forward KL(p || q) = 1/2 ln(4) + 1/4 ln(2) + 1/4 ln(1/3)     = (5 ln 2 - ln 3) / 4   ~ 0.5918
    reverse KL(q || p) = 1/8 ln(1/4) + 1/8 ln(1/2) + 3/4 ln(3)   = 3 ln 3 / 4 - 3 ln 2 / 8 ~ 0.5640
    JSD(1/2): m = (p + q) / 2 = (5/16, 3/16, 1/2)
        KL(p || m) = 1/2 ln(8/5) + 1/4 ln(4/3) + 1/4 ln(1/2)
        KL(q || m) = 1/8 ln(2/5) + 1/8 ln(2/3) + 3/4 ln(3/2)
        JSD = (KL(p || m) + KL(q || m)) / 2
    JSD(1/4) (teacher weight 1/4): m = p/4 + 3q/4 = (1/8 + 3/32, 1/16 + 3/32, 1/16 + 9/16) = (7/32, 5/32, 5/8)
        JSD = 1/4 KL(p || m) + 3/4 KL(q || m)

Gradients with respect to the student's logits s (q = softmax(s)):
    d KL(p || q) / ds = q - p
    d KL(q || p) / ds = q * (ln q - ln p - KL(q || p))
"""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.losses.distill import (
    argmax_agreement,
    forward_kl,
    future_mean_rewards,
    generalized_jsd,
    kd_loss,
    minillm_token_terms,
    mixture_weights,
    per_sequence_share,
    reverse_kl,
    token_log_probs,
)

P = (0.5, 0.25, 0.25)
Q = (0.125, 0.125, 0.75)
LN2, LN3 = math.log(2), math.log(3)
FWD = (5 * LN2 - LN3) / 4
REV = 3 * LN3 / 4 - 3 * LN2 / 8


def logits(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(x) for x in probs], dtype=torch.float64)


def one(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A single position: logits [1, V], mask [1]."""
    return x[None], torch.ones(1, dtype=torch.bool)


def kl(a, b) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_worked_example_by_hand():
    s, mask = one(logits(*Q))
    t, _ = one(logits(*P))
    assert FWD == pytest.approx(0.5918, abs=1e-4) and REV == pytest.approx(0.5640, abs=1e-4)
    assert forward_kl(s, t, mask).item() == pytest.approx(FWD, abs=1e-12)
    assert reverse_kl(s, t, mask).item() == pytest.approx(REV, abs=1e-12)
    kl_pm = 0.5 * math.log(8 / 5) + 0.25 * math.log(4 / 3) + 0.25 * math.log(0.5)
    kl_qm = 0.125 * math.log(2 / 5) + 0.125 * math.log(2 / 3) + 0.75 * math.log(1.5)
    assert generalized_jsd(s, t, mask, beta=0.5).item() == pytest.approx((kl_pm + kl_qm) / 2, abs=1e-12)
    m = (7 / 32, 5 / 32, 5 / 8)
    assert generalized_jsd(s, t, mask, beta=0.25).item() == pytest.approx(0.25 * kl(P, m) + 0.75 * kl(Q, m),
                                                                         abs=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_identical_distributions_give_zero(temperature, beta):
    x = torch.randn(4, 5, 11, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    for name in ("forward_kl", "reverse_kl", "jsd"):
        assert kd_loss(name, x, x.clone(), mask, temperature, beta).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_softens_both_and_scales_by_t_squared(temperature):
    """At temperature T both distributions are softmax(log p / T) = p^(1/T) / Z; the loss is T^2 x the KL."""
    def soften(probs):
        z = sum(x ** (1 / temperature) for x in probs)
        return [x ** (1 / temperature) / z for x in probs]

    pt, qt = soften(P), soften(Q)
    s, mask = one(logits(*Q))
    t, _ = one(logits(*P))
    assert forward_kl(s, t, mask, temperature).item() == pytest.approx(temperature ** 2 * kl(pt, qt), abs=1e-12)
    assert reverse_kl(s, t, mask, temperature).item() == pytest.approx(temperature ** 2 * kl(qt, pt), abs=1e-12)
    m = [(a + b) / 2 for a, b in zip(pt, qt)]
    jsd = temperature ** 2 * (kl(pt, m) + kl(qt, m)) / 2
    assert generalized_jsd(s, t, mask, 0.5, temperature).item() == pytest.approx(jsd, abs=1e-12)


def test_jsd_beta_endpoints_are_the_two_kls_and_the_limits_agree():
    """TRL's convention: beta = 0 is forward KL, beta = 1 reverse KL; and JSD(beta) / beta -> KL(p || q)
    as beta -> 0, JSD(beta) / (1 - beta) -> KL(q || p) as beta -> 1 (the teacher's weight in m is beta)."""
    s = torch.randn(6, 7, dtype=torch.float64)
    t = torch.randn(6, 7, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True, True])
    fwd, rev = forward_kl(s, t, mask), reverse_kl(s, t, mask)
    assert generalized_jsd(s, t, mask, beta=0.0).item() == fwd.item()
    assert generalized_jsd(s, t, mask, beta=1.0).item() == rev.item()
    eps = 1e-5
    assert (generalized_jsd(s, t, mask, beta=eps) / eps).item() == pytest.approx(fwd.item(), rel=1e-3)
    assert (generalized_jsd(s, t, mask, beta=1 - eps) / eps).item() == pytest.approx(rev.item(), rel=1e-3)


def test_masked_positions_add_nothing_and_sums_are_sums():
    s = torch.stack([logits(*Q), logits(*P), torch.tensor([50.0, -50.0, 0.0], dtype=torch.float64)])[None]
    t = torch.stack([logits(*P), logits(*P), torch.tensor([-50.0, 50.0, 0.0], dtype=torch.float64)])[None]
    mask = torch.tensor([[True, True, False]])
    assert forward_kl(s, t, mask).item() == pytest.approx(FWD, abs=1e-12)  # position 2: identical, 3: masked
    both = torch.tensor([[True, False, False]])
    twice = torch.cat([s, s], dim=0), torch.cat([t, t], dim=0), torch.cat([both, both], dim=0)
    assert reverse_kl(*twice).item() == pytest.approx(2 * REV, abs=1e-12)  # a sum over positions, not a mean
    assert argmax_agreement(s, t, torch.ones(1, 3, dtype=torch.bool)).item() == 1  # argmax 2/0, 0/0, 0/1


def test_gradients_by_hand_and_none_for_the_teacher():
    s = logits(*Q)[None].clone().requires_grad_()
    t = logits(*P)[None]
    mask = torch.ones(1, dtype=torch.bool)
    forward_kl(s, t, mask).backward()
    p, q = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    torch.testing.assert_close(s.grad[0], q - p, atol=1e-12, rtol=0)  # pulls q toward p: up where p > q
    s.grad = None
    reverse_kl(s, t, mask).backward()
    torch.testing.assert_close(s.grad[0], q * (q.log() - p.log() - REV), atol=1e-12, rtol=0)
    assert t.grad is None and not t.requires_grad
    # a step against any of the gradients lowers its loss
    for name in ("forward_kl", "reverse_kl", "jsd"):
        x = logits(*Q)[None].clone().requires_grad_()
        before = kd_loss(name, x, t, mask)
        before.backward()
        assert kd_loss(name, x.detach() - 0.1 * x.grad, t, mask).item() < before.item()


def test_low_precision_logits_are_computed_in_fp32():
    s = torch.randn(3, 9).to(torch.bfloat16)
    t = torch.randn(3, 9).to(torch.bfloat16)
    out = forward_kl(s, t, torch.ones(3, dtype=torch.bool))
    assert out.dtype == torch.float32 and torch.isfinite(out)


# --- MiniLLM ---------------------------------------------------------------------------------------
def test_future_mean_rewards_are_length_normalized_and_exclude_the_step_itself():
    """r = (1, 2, 3, 4) with the first position a prompt token: R_2 = (3 + 4) / 2, R_3 = 4 / 1, R_4 = 0."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    out = future_mean_rewards(rewards, mask)
    torch.testing.assert_close(out, torch.tensor([[0.0, 3.5, 4.0, 0.0], [6.0, 0.0, 0.0, 0.0]],
                                                 dtype=torch.float64), atol=1e-12, rtol=0)


def test_mixture_weights():
    """q(y) = 1/2, p(y) = 1/4, alpha = 0.2: p~ = 0.8 x 1/2 + 0.2 x 1/4 = 0.45, w = 0.5 / 0.45 = 10/9."""
    lq, lp = torch.tensor([math.log(0.5)], dtype=torch.float64), torch.tensor([math.log(0.25)], dtype=torch.float64)
    assert mixture_weights(lq, lp, 0.2).item() == pytest.approx(10 / 9, abs=1e-12)
    assert mixture_weights(lq, lp, 0.0).item() == 1.0
    with pytest.raises(ValueError):
        mixture_weights(lq, lp, 1.0)


def test_minillm_terms_by_hand():
    """Two sampled tokens y = (0, 2) with q and p the worked example at both positions:
    r_1 = ln p(0) - ln q(0) = ln(1/2) - ln(1/8) = ln 4, r_2 = ln(1/4) - ln(3/4) = -ln 3;
    A_1 = R_2 = -ln 3 (the mean of the rewards after step 1), A_2 = 0 (nothing follows);
    KL_t = KL(q || p) = REV at both; alpha = 0: w = 1.
    loss_1 = REV - A_1 ln q(0) = REV + ln 3 ln(1/8); loss_2 = REV.
    d loss_1 / ds_1 = q (ln q - ln p - REV) - A_1 (e_0 - q)."""
    s = torch.stack([logits(*Q), logits(*Q)])[None].clone().requires_grad_()
    t = torch.stack([logits(*P), logits(*P)])[None]
    tokens, mask = torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.bool)
    terms = minillm_token_terms(s, t, tokens, mask, teacher_mix=0.0)
    torch.testing.assert_close(terms["reward"][0], torch.tensor([2 * LN2, -LN3], dtype=torch.float64))
    torch.testing.assert_close(terms["advantage"][0], torch.tensor([-LN3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(terms["reverse_kl"][0].detach(), torch.tensor([REV, REV], dtype=torch.float64))
    expected = torch.tensor([REV + LN3 * math.log(0.125), REV], dtype=torch.float64)
    torch.testing.assert_close(terms["loss"][0].detach(), expected)
    terms["loss"].sum().backward()
    p, q = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    e0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(s.grad[0, 0], q * (q.log() - p.log() - REV) + LN3 * (e0 - q))
    torch.testing.assert_close(s.grad[0, 1], q * (q.log() - p.log() - REV))  # no future: the exact KL only


def test_minillm_teacher_mix_weights_every_term_and_masks():
    """alpha = 0.2 at token 0 (q = 1/8, p = 1/2): w = (1/8) / (0.8/8 + 0.2/2) = 0.125 / 0.2 = 0.625."""
    s = torch.stack([logits(*Q), logits(*Q), logits(*P)])[None]
    t = torch.stack([logits(*P), logits(*P), logits(*Q)])[None]
    terms = minillm_token_terms(s, t, torch.tensor([[0, 0, 1]]), torch.tensor([[True, True, False]]), 0.2)
    torch.testing.assert_close(terms["weight"][0], torch.tensor([0.625, 0.625, 0.0], dtype=torch.float64))
    torch.testing.assert_close(terms["weighted_kl"][0], torch.tensor([0.625 * REV, 0.625 * REV, 0.0],
                                                                     dtype=torch.float64))
    for k, v in terms.items():
        assert v[0, 2].item() == 0.0, k  # the masked position adds nothing


def test_per_sequence_share():
    """Row 1: mean of (1, 2, 3) = 2 over its generated tokens, x 4 data tokens = 8; row 2: a filler (0 data
    tokens) adds 0 whatever it generated."""
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    torch.testing.assert_close(per_sequence_share(values, mask, torch.tensor([4, 0])), torch.tensor([8.0, 0.0]))


def test_token_log_probs():
    x = torch.stack([logits(*P), logits(*Q)])
    torch.testing.assert_close(token_log_probs(x, torch.tensor([1, 2])),
                               torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64))
