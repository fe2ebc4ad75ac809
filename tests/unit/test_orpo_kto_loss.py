"""ORPO and KTO losses against hand-derived fp64 values.

ORPO, b = 0.5, length-averaged log-probs l = ln p chosen so the odds p / (1 - p) are simple:
  pair 0: p_w = 1/2 (odds 1),   p_l = 1/4 (odds 1/3): log_odds = ln 3,  log s = ln(3/4), loss = b ln(4/3)
  pair 1: p_w = 1/5 (odds 1/4), p_l = 1/2 (odds 1):   log_odds = -ln 4, log s = ln(1/5), loss = b ln 5
  pair 2: p_w = 2/3 (odds 2),   p_l = 1/3 (odds 1/2): log_odds = ln 4,  log s = ln(4/5), loss = b ln(5/4)
(s(ln x) = x / (1 + x).) Rewards are b l.

KTO, b = 0.5, z = 0.4, w_d = 1.5, w_u = 0.75, r = pi - ref:
  ex 0 desirable,   pi -3, ref -4:   r = 1,    loss = 1.5 (1 - s(0.5 (1 - 0.4)))  = 1.5 s(-0.3), reward 0.5
  ex 1 undesirable, pi -6, ref -5:   r = -1,   loss = 0.75 (1 - s(0.5 (0.4 + 1))) = 0.75 s(-0.7), reward -0.5
  ex 2 undesirable, pi -1, ref -1.4: r = 0.4,  loss = 0.75 (1 - s(0))              = 0.375, reward 0.2
  ex 3 desirable,   pi -2, ref -1.6: r = -0.4, loss = 1.5 (1 - s(0.5 (-0.8)))     = 1.5 s(0.4), reward -0.2
"""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.losses.kto import kl_estimate, kl_estimate_from_sums, kto_loss
from hydralign.losses.orpo import log1mexp, log_odds, orpo_loss, orpo_rewards


def s(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*v: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


LW, LL = t(math.log(1 / 2), math.log(1 / 5), math.log(2 / 3)), t(math.log(1 / 4), math.log(1 / 2), math.log(1 / 3))
KTO = dict(policy_logps=t(-3.0, -6.0, -1.0, -2.0), reference_logps=t(-4.0, -5.0, -1.4, -1.6),
           labels=torch.tensor([True, False, False, True]), kl=t(0.4).squeeze())
KTO_W = dict(beta=0.5, desirable_weight=1.5, undesirable_weight=0.75)


def test_orpo_hand_derived():
    losses, ratio = orpo_loss(LW, LL, beta=0.5)
    close = dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(log_odds(LW, LL), t(math.log(3), -math.log(4), math.log(4)), **close)
    torch.testing.assert_close(ratio, t(math.log(3 / 4), math.log(1 / 5), math.log(4 / 5)), **close)
    torch.testing.assert_close(losses, 0.5 * t(math.log(4 / 3), math.log(5), math.log(5 / 4)), **close)
    torch.testing.assert_close(torch.stack(orpo_rewards(LW, LL, beta=0.5)), 0.5 * torch.stack([LW, LL]), **close)


def test_orpo_matches_direct_odds_formula():
    """log_odds = log(p_w / (1 - p_w)) - log(p_l / (1 - p_l)), p = exp(l), in plain fp64 floats."""
    g = torch.Generator().manual_seed(0)
    lw, ll = (-5 * torch.rand(2, 64, generator=g, dtype=torch.float64) - 0.05).unbind()
    losses, ratio = orpo_loss(lw, ll, beta=0.2)
    for i, (pw, pl) in enumerate(zip(lw.exp().tolist(), ll.exp().tolist())):
        lo = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
        assert ratio[i].item() == pytest.approx(-math.log1p(math.exp(-lo)), abs=1e-12)
        assert losses[i].item() == pytest.approx(0.2 * math.log1p(math.exp(-lo)), abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_orpo_step_zero_identity(beta):
    """l_w = l_l: log_odds = 0, log s(0) = -ln 2, loss = b ln 2."""
    same = t(-0.3, -1.7, -9.0)
    losses, ratio = orpo_loss(same, same.clone(), beta=beta)
    torch.testing.assert_close(torch.stack([losses, ratio]), t(beta, -1.0)[:, None].expand(2, 3) * math.log(2))


def test_orpo_gradient_direction_and_value():
    """Pair 0: dL/dl_w = -b s(-lo) / (1 - p_w) = -0.5 (1/4) 2 = -0.25; dL/dl_l = b s(-lo) / (1 - p_l) =
    0.5 (1/4) (4/3) = 1/6. The loss falls as the chosen log-prob rises and the rejected one falls."""
    lw, ll = LW[:1].clone().requires_grad_(), LL[:1].clone().requires_grad_()
    losses, ratio = orpo_loss(lw, ll, beta=0.5)
    losses.sum().backward()
    assert lw.grad.item() == pytest.approx(-0.25, abs=1e-12) and ll.grad.item() == pytest.approx(1 / 6, abs=1e-12)
    assert not ratio.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_stable_near_zero_and_very_negative(dtype):
    """log(1 - e^x) ~ ln(-x) + x/2 for x -> 0-, ~ -e^x for x -> -inf; losses and grads stay finite."""
    lw = t(-1e-8, -50.0, -50.0, -1e-8, -1000.0, dtype=dtype).requires_grad_()
    ll = t(math.log(0.5), -51.0, -50.0, -1e-7, -0.5, dtype=dtype).requires_grad_()
    losses, ratio = orpo_loss(lw, ll, beta=0.5)
    assert losses.dtype == ratio.dtype == dtype
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(lw.grad).all() and torch.isfinite(ll.grad).all()
    assert losses[2].item() == pytest.approx(0.5 * math.log(2), rel=1e-6)  # equal at -50
    if dtype == torch.float64:
        assert log1mexp(t(-1e-8)).item() == pytest.approx(math.log(1e-8) - 5e-9, abs=1e-14)
        assert log_odds(t(-1e-8), t(math.log(0.5))).item() == pytest.approx(-5e-9 - math.log(1e-8), abs=1e-12)
        assert losses[1].item() == pytest.approx(0.5 * math.log1p(math.exp(-1.0)), abs=1e-12)  # lo = 1 + O(e^-50)


def test_kto_hand_derived_mixed_labels_weights_kl():
    losses, rewards = kto_loss(**KTO, **KTO_W)
    expected = t(1.5 * s(-0.3), 0.75 * s(-0.7), 0.375, 1.5 * s(0.4))
    torch.testing.assert_close(losses, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(rewards, t(0.5, -0.5, 0.2, -0.2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.5, 0.75)])
def test_kto_step_zero_identity(weights):
    """pi = ref, z = 0: 1 - s(0) = 1/2, so losses = w / 2, rewards 0."""
    logps, labels = t(-4.0, -7.5, -1.0, -3.0), torch.tensor([True, False, True, False])
    losses, rewards = kto_loss(logps, logps.clone(), labels, t(0.0).squeeze(), beta=0.3,
                               desirable_weight=weights[0], undesirable_weight=weights[1])
    torch.testing.assert_close(losses, t(weights[0] / 2, weights[1] / 2, weights[0] / 2, weights[1] / 2))
    assert torch.all(rewards == 0)


def test_kto_gradient_direction_and_value():
    """dL/dpi = -w_d b s(z)(1 - s(z)) for a desirable example (falls as pi rises) and +w_u b s(z)(1 - s(z))
    for an undesirable one (rises with pi); ex 0: z = 0.3, ex 2: z = 0 gives 0.75 * 0.5 * 0.25 = 0.09375."""
    pi = KTO["policy_logps"].clone().requires_grad_()
    losses, rewards = kto_loss(**{**KTO, "policy_logps": pi}, **KTO_W)
    losses.sum().backward()
    assert pi.grad[0].item() == pytest.approx(-1.5 * 0.5 * s(0.3) * s(-0.3), abs=1e-12)
    assert pi.grad[1].item() == pytest.approx(0.75 * 0.5 * s(0.7) * s(-0.7), abs=1e-12)
    assert pi.grad[2].item() == pytest.approx(0.09375, abs=1e-12)
    assert pi.grad[3].item() == pytest.approx(-1.5 * 0.5 * s(-0.4) * s(0.4), abs=1e-12)
    assert not rewards.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    """(ORPO losses in fp32 and fp64 are also checked by the stability test.)"""
    cr, rr = orpo_rewards(LW.to(dtype), LL.to(dtype), beta=0.1)
    kto = {**KTO, **{k: KTO[k].to(dtype) for k in ("policy_logps", "reference_logps", "kl")}}
    losses, rewards = kto_loss(**kto, **KTO_W)
    assert cr.dtype == rr.dtype == losses.dtype == rewards.dtype == dtype


def test_kl_estimates_clamp_detach_and_agree():
    """mean(pi - ref) = (1 + 0.5 - 0.3) / 3 = 0.4; a negative mean clamps to 0."""
    pi, ref = t(-2.0, -3.5, -1.3).requires_grad_(), t(-3.0, -4.0, -1.0)
    kl = kl_estimate(pi, ref)
    assert kl.dim() == 0 and not kl.requires_grad and kl.item() == pytest.approx(0.4, abs=1e-12)
    assert kl_estimate(ref, pi).item() == 0.0
    from_sums = kl_estimate_from_sums((pi - ref).sum(), 3)
    assert not from_sums.requires_grad and from_sums.item() == pytest.approx(kl.item(), abs=1e-12)
    torch.testing.assert_close(kl_estimate_from_sums(t(-1.0, 3.0), torch.tensor(4)), t(0.0, 0.75))  # elementwise


def test_kto_refuses_bad_kl_and_labels():
    with pytest.raises(ValueError, match="0-dim"):
        kto_loss(**{**KTO, "kl": t(0.4)}, **KTO_W)
    with pytest.raises(ValueError, match="bool"):
        kto_loss(**{**KTO, "labels": KTO["labels"].long()}, **KTO_W)
