"""Off-policy correction (``hydralign.losses.grpo.importance_weights``) against hand-computed values.

Two completions of 3 tokens; the second's last token is padding (mask 0). Log-ratios old - sampler:
row 0: ln 2, ln 4, ln 0.5 -> token ratios 2, 4, 0.5; sequence ratio 2 x 4 x 0.5 = 4.
row 1: ln 0.25, ln 1.5, (pad: ln 100, ignored) -> token ratios 0.25, 1.5; sequence ratio 0.375.
With clip_max 3 and clip_min 0.3:
- token_truncate: [2, 3, 0.5], [0.3, 1.5, 1(pad)]; clipped: the 4 and the 0.25.
- token_mask: [2, 0, 0.5], [0, 1.5, 1]; the same two clipped.
- sequence_truncate: row 0 all 3 (4 > 3); row 1 0.375 on its tokens, 1 on the pad; clipped: row 0's 3 tokens.
- sequence_mask: row 0 all 0; row 1 0.375, 0.375, 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.losses.grpo import IS_MODES, importance_weights, per_token_loss

L = math.log
OLD = torch.tensor([[L(2.0), L(4.0), L(0.5)], [L(0.25), L(1.5), L(100.0)]]) - 1.0
SAMPLER = torch.full((2, 3), -1.0)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("mode, weight, clipped", [
    ("token_truncate", [[2.0, 3.0, 0.5], [0.3, 1.5, 1.0]], [[0, 1, 0], [1, 0, 0]]),
    ("token_mask", [[2.0, 0.0, 0.5], [0.0, 1.5, 1.0]], [[0, 1, 0], [1, 0, 0]]),
    ("sequence_truncate", [[3.0, 3.0, 3.0], [0.375, 0.375, 1.0]], [[1, 1, 1], [0, 0, 0]]),
    ("sequence_mask", [[0.0, 0.0, 0.0], [0.375, 0.375, 1.0]], [[1, 1, 1], [0, 0, 0]]),
])
def test_each_mode_by_hand(mode, weight, clipped):
    w, ratio, out = importance_weights(OLD, SAMPLER, MASK, mode, clip_max=3.0, clip_min=0.3)
    assert w.flatten().tolist() == pytest.approx(torch.tensor(weight).flatten().tolist(), rel=1e-5)
    assert out.int().tolist() == clipped
    if mode.startswith("token"):
        assert ratio[0].tolist() == pytest.approx([2.0, 4.0, 0.5], rel=1e-5)
    else:
        assert ratio[:, 0].tolist() == pytest.approx([4.0, 0.375], rel=1e-5)


def test_default_bounds_are_trls_and_only_the_upper_one_acts():
    """clip_max 3.0 (TRL's cap), clip_min 0: a small ratio passes as it is."""
    w, _, out = importance_weights(OLD, SAMPLER, MASK, "token_truncate")
    assert w[1].tolist() == pytest.approx([0.25, 1.5, 1.0], rel=1e-5) and out.sum() == 1


@pytest.mark.parametrize("mode", IS_MODES)
def test_on_policy_sampler_leaves_the_loss_unchanged(mode):
    """Sampler log-probs == the learner's: weight 1 everywhere, the loss and its gradient as without correction."""
    torch.manual_seed(0)
    logps = torch.randn(4, 5, requires_grad=True)
    adv = torch.randn(4)
    w, ratio, out = importance_weights(logps, logps.detach(), torch.ones(4, 5), mode)
    assert torch.equal(w, torch.ones(4, 5)) and not out.any()
    plain, _, _ = per_token_loss(logps, logps.detach(), adv)
    corrected, _, _ = per_token_loss(logps, logps.detach(), adv, is_weight=w)
    g1, = torch.autograd.grad(plain.sum(), logps)
    g2, = torch.autograd.grad(corrected.sum(), logps)
    assert torch.equal(plain, corrected) and torch.equal(g1, g2)


def test_the_weight_scales_the_policy_term_not_the_kl():
    """loss = -A x ratio x w + beta x k3; here ratio 1 (old = logps), A = 2, w = 0.5, ref = logps: k3 = 0."""
    logps = torch.tensor([[-1.0, -2.0]])
    loss, _, kl = per_token_loss(logps, logps, torch.tensor([2.0]), ref_logps=logps - 0.1, beta=0.5,
                                 is_weight=torch.tensor([[0.5, 0.5]]))
    k3 = math.exp(-0.1) + 0.1 - 1
    assert loss[0].tolist() == pytest.approx([-1.0 + 0.5 * k3, -1.0 + 0.5 * k3], rel=1e-5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="token_truncate"):
        importance_weights(OLD, SAMPLER, MASK, "tis")
