"""Behaviour unchanged by the redesign: the printed plan of every card and of configs across methods,
strategies, packing and hardware is byte-identical to the golden files (tests/golden/plans.py wrote them)."""

from __future__ import annotations

import pytest

from tests.golden.plans import HERE, all_configs, printed_plan

CONFIGS = all_configs()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_printed_plan_is_golden(name):
    assert printed_plan(CONFIGS[name]) == (HERE / f"{name}.txt").read_text()


def test_every_card_has_a_golden_plan():
    assert {p.stem for p in HERE.glob("card_*.txt")} == {n for n in CONFIGS if n.startswith("card_")}
