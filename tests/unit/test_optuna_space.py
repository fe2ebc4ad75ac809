"""Plugin discovery and the table from Hydra's override grammar to Optuna distributions."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.hydralign_optuna_sweeper._impl import distribution, grid_of
from tests.conftest import compose_cfg


def test_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.hydralign_optuna_sweeper.optuna_sweeper.OptunaSweeper" in found


def test_sweeper_config_composes():
    cfg = compose_cfg(["hydra/sweeper=optuna", "+sweeps=lr_search"])
    assert cfg.optimized_metric == "val/exact_match"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x=choice(1, 2, 3)", CategoricalDistribution([1, 2, 3])),
        ("x=choice(a, b)", CategoricalDistribution(["a", "b"])),
        ("x=1,2,4", CategoricalDistribution([1, 2, 4])),
        ("x=range(1, 9, 2)", IntDistribution(1, 7, step=2)),
        ("x=range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("x=interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
        ("x=int(interval(1, 8))", IntDistribution(1, 8)),
        ("x=tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
        ("x=tag(log, int(interval(16, 256)))", IntDistribution(16, 256, log=True)),
        ("x=0.5", "0.5"),
        ("model=tiny", "tiny"),
    ],
)
def test_override_grammar_to_distribution(text, expected):
    [override] = OverridesParser.create().parse_overrides([text])
    assert distribution(override) == expected


def test_grid_needs_discrete_space():
    assert grid_of({"a": CategoricalDistribution([1, 2]), "b": IntDistribution(0, 4, step=2)}) == {
        "a": [1, 2], "b": [0, 2, 4]}
    assert grid_of({"lr": FloatDistribution(1e-4, 1e-2, log=True)}) is None
