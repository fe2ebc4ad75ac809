"""Pure functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hydralign.evaluation import exact_match, exact_match_flex, extract_answer, is_repetitive
from hydralign.losses.token_ce import IGNORE, token_nll_sum
from hydralign.optim.schedules import lr_factor


def test_token_nll_sum_hand_computed():
    """Vocab 2, one sequence of 3 tokens, labels [x, 1, 0]: position 0 predicts label 1 with logits
    (0, 0): -log(1/2) = ln 2; position 1 predicts label 0 with logits (ln 3, 0): p = 3/4, so
    -log(3/4). Position 2 predicts nothing. Sum = ln 2 + ln(4/3), count = 2."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    total, count = token_nll_sum(logits, labels)
    assert count.item() == 2
    assert total.item() == pytest.approx(math.log(2) + math.log(4 / 3), abs=1e-6)


def test_token_nll_sum_ignores_masked_targets():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE)
    total, count = token_nll_sum(logits, labels)
    assert count.item() == 0 and total.item() == 0.0


@pytest.mark.parametrize(
    "step, name, expected",
    [
        (0, "constant", 1 / 5), (3, "constant", 4 / 5), (4, "constant", 1.0), (99, "constant", 1.0),
        (4, "linear", 1.0), (99, "linear", 0.0),  # decays to min_lr_ratio 0 at the last step
        (4, "cosine", 1.0), (99, "cosine", 0.0),
        (4 + 95 // 2, "linear", 1 - 47 / 95),
        (79, "multistep", 1.0), (80, "multistep", 0.316), (89, "multistep", 0.316), (90, "multistep", 0.1),
    ],
)
def test_lr_factor(step, name, expected):
    assert lr_factor(step, name, total_steps=100, warmup_steps=4) == pytest.approx(expected)


def test_cosine_midpoint_and_floor():
    # warmup 0, total 101: step 50 is half way -> 0.5 * (1 + cos(pi/2)) = 0.5 between floor and peak
    assert lr_factor(50, "cosine", 101, 0, min_lr_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, "cosine", 101, 0, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_multistep_fractions_configurable():
    f = [lr_factor(s, "multistep", 10, 0, milestones=[0.5], factors=[0.25]) for s in range(10)]
    assert f == [1.0] * 5 + [0.25] * 5


@pytest.mark.parametrize(
    "pred, ref, strict, flex",
    [
        ("  8521 ", "8521", True, True),
        ("The answer is 1,258.", "1258", False, True),
        ("answer: 42", "42", False, True),
        ("42 and then 43", "42", False, False),
        ("Paris.", "paris", False, True),
        ("", "7", False, False),
    ],
)
def test_exact_match_strict_and_flex(pred, ref, strict, flex):
    assert exact_match(pred, ref) is strict
    assert exact_match_flex(pred, ref) is flex


def test_extract_answer():
    assert extract_answer("so 3+4 = 7, the answer is 7") == "7"
    assert extract_answer("-12.5") == "-12.5"


def test_repetition():
    loop = [5, 6, 7] * 4
    assert is_repetitive(loop, stopped=False)
    assert not is_repetitive(loop, stopped=True)  # it stopped: not a runaway generation
    assert not is_repetitive(list(range(12)), stopped=False)
    assert is_repetitive([1, 2, 3, 9, 9, 9], stopped=False)
    assert not is_repetitive([1, 2, 9, 9], stopped=False, min_repeats=3)
