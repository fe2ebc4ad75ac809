"""Behaviour unchanged by the redesign: the default job's first 50 window losses match the golden curve recorded
before it (tests/golden/default_loss.py). Bit for bit on the machine that recorded it (``--check``); here with a
margin, since another CPU's summation order moves the last digits."""

from __future__ import annotations

import json

import pytest

from tests.golden.default_loss import GOLDEN, STEPS, first_losses


def test_default_job_first_50_losses_match_the_golden_curve(tmp_path):
    golden = json.loads(GOLDEN.read_text())["losses"]
    losses = first_losses(tmp_path)
    assert len(losses) == len(golden) == STEPS
    assert losses == pytest.approx(golden, rel=2e-3)
    assert losses[-1] < 0.5 * losses[0]  # and it learns
