"""Preference losses against hand-derived fp64 values.

One pair throughout: policy log-probs pi_w = -2, pi_l = -3; reference ref_w = ref_l = -2.5;
completion lengths |y_w| = 2, |y_l| = 4; beta b = 0.5. Then the DPO margin
h = (pi_w - ref_w) - (pi_l - ref_l) = 0.5 - (-0.5) = 1 and b h = 0.5. softplus(x) = ln(1 + e^x),
so -ln s(x) = softplus(-x).
Length-averaged: pi_w/2 = -1, pi_l/4 = -0.75, ref_w/2 = -1.25, ref_l/4 = -0.625, so the
normalized margin h_n = (0.25) - (-0.125) = 0.375.
Rewards (TRL's DPOTrainer convention, every loss with a reference, normalized ones included) use the
SUMMED log-probs: b (pi_w - ref_w) = 0.5 (-2 + 2.5) = 0.25 and b (pi_l - ref_l) = 0.5 (-3 + 2.5) = -0.25.
"""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.losses.preference import preference_loss
from hydralign.losses.preference_types import LOSS_TYPES
from hydralign.losses.token_ce import IGNORE, sequence_logps


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


PAIR = dict(policy_chosen_logps=t(-2.0), policy_rejected_logps=t(-3.0), ref_chosen_logps=t(-2.5),
            ref_rejected_logps=t(-2.5))
LENGTHS = dict(chosen_lengths=t(2.0), rejected_lengths=t(4.0))

CASES = [
    # (loss_type, extra kwargs, loss, chosen reward, rejected reward)
    ("sigmoid", {}, sp(-0.5), 0.25, -0.25),  # -ln s(b h)
    ("sigmoid", {"label_smoothing": 0.1}, 0.9 * sp(-0.5) + 0.1 * sp(0.5), 0.25, -0.25),  # cDPO
    ("robust", {"label_smoothing": 0.1}, (0.9 * sp(-0.5) - 0.1 * sp(0.5)) / 0.8, 0.25, -0.25),
    ("hinge", {}, 0.5, 0.25, -0.25),  # max(0, 1 - b h) = 1 - 0.5
    # IPO loss (h_n - 1/(2b))^2 with 1/(2b) = 1 on the normalized margin; rewards on the SUMMED log-probs:
    # 0.5 (-2 - (-2.5)) = 0.25 and 0.5 (-3 - (-2.5)) = -0.25 (not the averaged 0.5 * 0.25, 0.5 * -0.125)
    ("ipo", {}, (0.375 - 1.0) ** 2, 0.25, -0.25),
    # -ln s(b h_n); rewards as ipo: summed, 0.25 and -0.25 (not the averaged 0.125, -0.0625)
    ("sigmoid_norm", {}, sp(-0.5 * 0.375), 0.25, -0.25),
    # SimPO: -ln s(b (avg_w - avg_l - gamma/b)) = -ln s(0.5 (-1 + 0.75 - 0.5)) = softplus(0.375);
    # reference-free, rewards b * avg log-prob (TRL's CPOTrainer): 0.5 * -1 = -0.5 and 0.5 * -0.75 = -0.375
    ("simpo", {"gamma_beta_ratio": 0.5}, sp(0.375), -0.5, -0.375),
    # -pi_w / |y_w| = 2 / 2; a reference is given, so rewards b (pi - ref) summed: 0.25 and -0.25
    ("sft", {}, 1.0, 0.25, -0.25),
]


@pytest.mark.parametrize("loss_type, extra, loss, chosen, rejected", CASES)
def test_losses_hand_derived(loss_type, extra, loss, chosen, rejected):
    losses, rc, rr = preference_loss(**PAIR, **LENGTHS, loss_type=loss_type, beta=0.5, **extra)
    assert losses.dtype == torch.float64
    assert losses.item() == pytest.approx(loss, abs=1e-12)
    assert rc.item() == pytest.approx(chosen, abs=1e-12) and rr.item() == pytest.approx(rejected, abs=1e-12)


def test_weighted_list_is_the_weighted_sum_and_rewards_come_from_the_first_preference_loss():
    losses, rc, rr = preference_loss(**PAIR, **LENGTHS, loss_type=["sft", "sigmoid"], loss_weights=[0.5, 1.0],
                                     beta=0.5)
    assert losses.item() == pytest.approx(0.5 * 1.0 + sp(-0.5), abs=1e-12)  # RPO
    assert (rc.item(), rr.item()) == pytest.approx((0.25, -0.25), abs=1e-12)


REFERENCE_TYPES = [name for name, (needs_ref, _) in LOSS_TYPES.items() if needs_ref] + ["sft"]


@pytest.mark.parametrize("loss_type", REFERENCE_TYPES)
def test_rewards_are_summed_log_ratios_whatever_the_lengths(loss_type):
    """Every loss with a reference (sft given one too): rewards = b (pi - ref) on the SUMMED log-probs,
    unchanged when the lengths change, while a length-normalized loss does change."""
    pc, pr, rc_, rr_ = t(-2.0, -7.0, -0.5), t(-3.0, -4.0, -6.0), t(-2.5, -6.0, -1.5), t(-2.5, -5.5, -5.0)
    beta = 0.5
    expected_c, expected_r = beta * (pc - rc_), beta * (pr - rr_)  # 0.25, -0.5, 0.5 and -0.25, 0.75, -0.5
    seen_losses = []
    for lengths in [(t(2, 3, 1), t(4, 1, 5)), (t(7, 1, 9), t(1, 6, 2)), (t(1, 1, 1), t(1, 1, 1))]:
        losses, rc, rr = preference_loss(pc, pr, rc_, rr_, loss_type=loss_type, beta=beta,
                                         chosen_lengths=lengths[0], rejected_lengths=lengths[1],
                                         label_smoothing=0.1 * (loss_type == "robust"))
        torch.testing.assert_close(rc, expected_c, atol=1e-12, rtol=0)
        torch.testing.assert_close(rr, expected_r, atol=1e-12, rtol=0)
        seen_losses.append(losses)
    if LOSS_TYPES[loss_type][1]:  # length-normalized: the loss itself still depends on the lengths
        assert not torch.allclose(seen_losses[0], seen_losses[1])
    else:
        torch.testing.assert_close(seen_losses[0], seen_losses[1], atol=0, rtol=0)


def test_ipo_rewards_ignore_lengths_but_its_loss_does_not():
    """The hand pair with lengths 2/4 and then 1/1: ipo loss (h_n - 1)^2 goes from (0.375 - 1)^2 to
    (h - 1)^2 = 0 (at unit lengths h_n = h = 1), rewards stay 0.25 / -0.25."""
    for lengths, loss in [(LENGTHS, (0.375 - 1.0) ** 2), (dict(chosen_lengths=t(1.0), rejected_lengths=t(1.0)), 0.0)]:
        losses, rc, rr = preference_loss(**PAIR, **lengths, loss_type="ipo", beta=0.5)
        assert losses.item() == pytest.approx(loss, abs=1e-12)
        assert (rc.item(), rr.item()) == pytest.approx((0.25, -0.25), abs=1e-12)


def test_reference_free_rewards_stay_length_averaged():
    """simpo, and sft without a reference: b * avg policy log-prob, 0.5 * -2/2 = -0.5, 0.5 * -3/4 = -0.375."""
    for loss_type in ("simpo", "sft"):
        _, rc, rr = preference_loss(t(-2.0), t(-3.0), None, None, loss_type=loss_type, beta=0.5, **LENGTHS)
        assert (rc.item(), rr.item()) == pytest.approx((-0.5, -0.375), abs=1e-12)


def test_rpo_with_a_normalized_loss_reports_summed_rewards():
    _, rc, rr = preference_loss(**PAIR, **LENGTHS, loss_type=["sft", "sigmoid_norm"], beta=0.5)
    assert (rc.item(), rr.item()) == pytest.approx((0.25, -0.25), abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_step_zero_identities(beta):
    """Policy = reference: h = 0, so sigmoid = ln 2, robust = ln 2, hinge = 1, ipo = 1/(4 b^2), rewards 0."""
    logps = t(-4.0, -7.5, -1.0)
    same = dict(policy_chosen_logps=logps, policy_rejected_logps=logps - 1, ref_chosen_logps=logps,
                ref_rejected_logps=logps - 1, chosen_lengths=t(3, 5, 1), rejected_lengths=t(4, 2, 2))
    expected = {"sigmoid": math.log(2), "robust": math.log(2), "hinge": 1.0, "ipo": 1 / (4 * beta**2),
                "sigmoid_norm": math.log(2)}
    for name, value in expected.items():
        losses, rc, rr = preference_loss(**same, loss_type=name, beta=beta, label_smoothing=0.2 * (name == "robust"))
        torch.testing.assert_close(losses, torch.full((3,), value, dtype=torch.float64), atol=1e-12, rtol=0)
        assert torch.all(rc == 0) and torch.all(rr == 0) and torch.all(rc - rr == 0)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = t(-2.0).requires_grad_(), t(-3.0).requires_grad_()
    losses, _, _ = preference_loss(pc, pr, t(-2.5), t(-2.5), loss_type="sigmoid", beta=0.5)
    losses.sum().backward()
    # d/dpi_w -ln s(b h) = -b (1 - s(b h)) = -0.5 s(-0.5)
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.5)), abs=1e-12)
    assert pr.grad.item() == pytest.approx(0.5 / (1 + math.exp(0.5)), abs=1e-12)


def test_missing_inputs_are_refused():
    with pytest.raises(ValueError, match="needs reference"):
        preference_loss(t(-1.0), t(-2.0), None, None, loss_type="sigmoid", beta=0.1)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss(**PAIR, loss_type="ipo", beta=0.1)
    with pytest.raises(ValueError, match="unknown"):
        preference_loss(**PAIR, loss_type="kto", beta=0.1)
    with pytest.raises(ValueError, match="loss_weights"):
        preference_loss(**PAIR, loss_type=["sigmoid", "sft"], loss_weights=[1.0], beta=0.1, **LENGTHS)
    simpo, _, _ = preference_loss(t(-2.0), t(-3.0), None, None, loss_type="simpo", beta=0.5, **LENGTHS)
    assert torch.isfinite(simpo).all()  # reference-free


def test_sequence_logps_hand_computed():
    """Vocab 2: row 0 targets label 1 under logits (0, 0) (p = 1/2) and label 0 under (ln 3, 0)
    (p = 3/4): logp = ln(1/2) + ln(3/4), length 2. Row 1 has no target: logp 0, length 0."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]] * 2)
    labels = torch.tensor([[IGNORE, 1, 0], [IGNORE, IGNORE, IGNORE]])
    logps, lengths = sequence_logps(logits, labels)
    assert logps[0].item() == pytest.approx(math.log(0.5) + math.log(0.75), abs=1e-6)
    assert logps[1].item() == 0.0 and lengths.tolist() == [2, 0]
