"""GRPO's advantages, clipped loss, KL and aggregations against hand-computed values: 2 prompts x 3 samples."""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.losses.grpo import aggregate, group_advantages, k3_kl, per_token_loss, unit_count

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])  # prompt 1: one right of 3, prompt 2: two right
S = math.sqrt(1 / 3)  # unbiased std of {1, 0, 0} and of {1, 1, 0}


@pytest.mark.parametrize("scale, expected", [
    ("group", [2 / 3 / (S + 1e-4), -1 / 3 / (S + 1e-4), -1 / 3 / (S + 1e-4),
               1 / 3 / (S + 1e-4), 1 / 3 / (S + 1e-4), -2 / 3 / (S + 1e-4)]),
    # batch std of [1,0,0,1,1,0]: unbiased variance 6 x 0.25 / 5 = 0.3
    ("batch", [v / (math.sqrt(0.3) + 1e-4) for v in (2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3)]),
    ("none", [2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3]),
])
def test_group_advantages(scale, expected):
    assert group_advantages(REWARDS, 3, scale).tolist() == pytest.approx(expected, rel=1e-6)


def test_equal_rewards_give_zero_advantage_and_bad_groups_are_refused():
    assert group_advantages(torch.ones(6), 3, "group").tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="num_generations=4"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, 3, "rank")


def _ratios(ratios):
    old = torch.full((len(ratios), 1), math.log(0.3))
    return old + torch.log(torch.tensor(ratios)).unsqueeze(1), old


def test_clipped_loss_and_clip_higher():
    logps, old = _ratios([1.5, 0.5, 0.5, 1.5])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped, kl = per_token_loss(logps, old, adv, epsilon=0.2)
    # ratio 1.5, A>0: capped at 1.2 (clipped); ratio 0.5, A<0: floor 0.8 (clipped); the others unclipped
    assert loss.squeeze(1).tolist() == pytest.approx([-1.2, 0.8, -0.5, 1.5], rel=1e-6)
    assert clipped.squeeze(1).tolist() == [True, True, False, False]
    assert kl is None
    loss, clipped, _ = per_token_loss(logps, old, adv, epsilon=0.2, epsilon_high=0.6)  # DAPO clip-higher
    assert loss.squeeze(1).tolist() == pytest.approx([-1.5, 0.8, -0.5, 1.5], rel=1e-6)
    assert clipped.squeeze(1).tolist() == [False, True, False, False]
    # gradient is zero where clipped: d loss / d logp = -ratio * A elsewhere
    logps.requires_grad_(True)
    loss, _, _ = per_token_loss(logps, old, adv, epsilon=0.2)
    loss.sum().backward()
    assert logps.grad.squeeze(1).tolist() == pytest.approx([0.0, 0.0, -0.5, 1.5], rel=1e-6)


def test_k3_kl_and_beta():
    logps = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    assert k3_kl(logps, ref).tolist()[0] == pytest.approx([0.5 + math.log(2) - 1, 0.0], abs=1e-7)
    loss, _, kl = per_token_loss(logps, logps.detach(), torch.tensor([2.0]), ref_logps=ref, beta=0.1)
    # ratio 1: policy term -A = -2 per token, plus 0.1 x KL
    assert loss.tolist()[0] == pytest.approx([-2 + 0.1 * (0.5 + math.log(2) - 1), -2.0], rel=1e-6)
    with pytest.raises(ValueError, match="reference"):
        per_token_loss(logps, logps, torch.tensor([1.0]), beta=0.1)


# Token losses of the 6 completions (max_completion_length 3); masks of 3, 1, 2 | 3, 0, 2 tokens.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 7.0, 9.0],
                     [2.0, 2.0, 2.0], [9.0, 9.0, 9.0], [1.0, 3.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0]])


@pytest.mark.parametrize("loss_type, total, units", [
    ("grpo", 2.0 + 4.0 + 6.0 + 2.0 + 0.0 + 2.0, 6.0),  # per-sequence means summed; every sequence counts
    ("dapo", 6.0 + 4.0 + 12.0 + 6.0 + 0.0 + 4.0, 11.0),  # masked tokens summed; masked token count
    ("dr_grpo", 32.0, 18.0),  # masked tokens summed; 6 x max_completion_length 3
])
def test_aggregations_are_sums_and_unit_counts(loss_type, total, units):
    s, n = aggregate(LOSS, MASK, loss_type, 3)
    assert float(s) == pytest.approx(total) and float(n) == units
    assert unit_count(MASK, loss_type, 3) == units
    # split into micro-batches of 2 and 4 then divided once by the whole count: the same mean
    (s1, n1), (s2, n2) = aggregate(LOSS[:2], MASK[:2], loss_type, 3), aggregate(LOSS[2:], MASK[2:], loss_type, 3)
    assert float(s1 + s2) / float(n1 + n2) == pytest.approx(total / units)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(LOSS, MASK, "ppo", 3)
