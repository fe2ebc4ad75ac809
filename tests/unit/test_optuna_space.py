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


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes"])
def test_samplers_optimize(name):
    import optuna

    from hydralign.optuna_study import make_sampler

    study = optuna.create_study(sampler=make_sampler(name, seed=0, kwargs={}), direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=12)
    assert len(study.trials) == 12 and study.best_value < 0.5


def test_grid_sampler_covers_the_grid():
    import optuna

    from hydralign.optuna_study import make_sampler

    study = optuna.create_study(sampler=make_sampler("grid", 0, {}, grid={"a": [1, 2], "b": ["x", "y"]}))
    study.optimize(lambda t: t.suggest_categorical("a", [1, 2]) + len(t.suggest_categorical("b", ["x", "y"])),
                   n_trials=4)
    assert {(t.params["a"], t.params["b"]) for t in study.trials} == {(1, "x"), (1, "y"), (2, "x"), (2, "y")}


def test_journal_storage_default_and_urls(tmp_path):
    import optuna

    from hydralign.optuna_study import make_pruner, make_storage

    journal = make_storage(str(tmp_path / "s.journal"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    assert make_storage("sqlite:///x.db") == "sqlite:///x.db"
    assert isinstance(make_pruner("successive_halving"), optuna.pruners.SuccessiveHalvingPruner)
    with pytest.raises(ValueError, match="choose one of"):
        make_pruner("bogus")


def test_objective_fails_loudly_with_logged_names():
    from hydralign.train import objective

    assert objective({"val/loss": 0.5}, "val/loss") == 0.5
    with pytest.raises(KeyError, match=r"optimized_metric=val/acc was not logged.*\['val/loss'\]"):
        objective({"val/loss": 0.5}, "val/acc")
