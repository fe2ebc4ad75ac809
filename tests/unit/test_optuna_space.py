"""The Optuna sweeper's pure parts: discovery and selection, the table from Hydra's override grammar to
Optuna distributions (as the official plugin reads it), directions, and what a job's return means."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.hydralign_optuna_sweeper._impl import directions_of
from hydra_plugins.hydralign_optuna_sweeper._outcome import failure_report, outcome, to_values, where
from hydra_plugins.hydralign_optuna_sweeper._space import SearchSpace, distribution, override_value

OPTUNA_SWEEPER = "hydra_plugins.hydralign_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def test_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert OPTUNA_SWEEPER in found


def test_sweeps_file_selects_the_optuna_sweeper():
    from hydra import compose, initialize_config_dir

    from hydralign.config.store import register
    from tests.helpers import CONF

    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        plain = compose("config", return_hydra_config=True)
        swept = compose("config", overrides=["+sweeps=lr_search"], return_hydra_config=True)
    assert plain.hydra.sweeper._target_ != OPTUNA_SWEEPER
    assert swept.hydra.sweeper._target_ == OPTUNA_SWEEPER
    assert swept.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert swept.hydra.sweeper.sampler.seed == 0 and swept.hydra.sweeper.direction == "maximize"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x=choice(1, 2, 3)", CategoricalDistribution([1, 2, 3])),
        ("x=choice(a, b)", CategoricalDistribution(["a", "b"])),
        ("x=choice(true, false)", CategoricalDistribution([True, False])),
        ("x=1,2,4", CategoricalDistribution([1, 2, 4])),
        ("x=range(1, 3)", IntDistribution(1, 3)),  # the official plugin includes the stop, unlike the basic sweeper
        ("x=range(1, 9, 2)", IntDistribution(1, 9, step=2)),
        ("x=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
        ("x=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
        ("x=shuffle(range(1, 4))", CategoricalDistribution([1, 2, 3])),
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
    found = distribution(override)
    if isinstance(expected, CategoricalDistribution) and "shuffle" in text:
        assert set(found.choices) == set(expected.choices)  # shuffled order
    else:
        assert found == expected


def test_search_space_fixed_deletions_and_precedence():
    space = SearchSpace.parse(["x=range(1, 3)", "y=5", "z=choice(a, b)",  # hydra.sweeper.params
                               "x=7", "lr=interval(0.1, 1)", "~w", "~v=1"])  # then the command line
    assert space.distributions == {"z": CategoricalDistribution(["a", "b"]), "lr": FloatDistribution(0.1, 1.0)}
    assert space.fixed == {"y": "5", "x": "7"}  # the command line's fixed x replaces the searched one
    assert space.passthrough == ["~w", "~v=1"]


def test_grid_points_include_the_stop():
    space = SearchSpace.parse(["a=choice(1, 2)", "b=range(0, 4, 2)", "c=range(-1.0, 1.0, step=1)"])
    assert space.grid() == {"a": [1, 2], "b": [0, 2, 4], "c": [-1.0, 0.0, 1.0]}
    assert SearchSpace.parse(["lr=tag(log, interval(1e-4, 1e-2))"]).grid() is None  # continuous: no grid
    assert SearchSpace.parse([]).grid() == {}  # empty space: one point, the fixed parameters


def test_study_name_follows_the_space_and_direction():
    a = SearchSpace.parse(["x=interval(0, 1)", "y=2"])
    assert a.study_name(["minimize"]) == SearchSpace.parse(["x=interval(0, 1)", "y=2"]).study_name(["minimize"])
    assert a.study_name(["minimize"]) != a.study_name(["maximize"])
    assert a.study_name(["minimize"]) != SearchSpace.parse(["x=interval(0, 2)", "y=2"]).study_name(["minimize"])


@pytest.mark.parametrize("value, text", [(0.1, "0.1"), (1e-5, "1e-05"), (3, "3"), (None, "null"), ("abc", "abc"),
                                         (True, "True")])
def test_sampled_values_as_override_values(value, text):
    assert override_value(value) == text
    [ov] = OverridesParser.create().parse_overrides([f"k={text}"])
    assert ov.value() == value


def test_directions():
    assert directions_of("minimize") == ["minimize"]
    assert directions_of(["minimize", "Maximize"]) == ["minimize", "maximize"]
    with pytest.raises(ValueError, match="must be minimize, maximize or a list"):
        directions_of("max")


def test_return_values_anything_float_accepts():
    import numpy as np
    import torch

    for value in (1, 0.5, np.float32(0.5), np.int64(2), torch.tensor(0.25), torch.tensor([0.75])[0]):
        assert to_values(value, 1) == [float(value)]
    assert to_values((1, np.float64(2.0)), 2) == [1.0, 2.0]
    assert to_values([torch.tensor(1.0), 3], 2) == [1.0, 3.0]
    with pytest.raises(ValueError, match="return a number"):
        to_values("high", 1)
    with pytest.raises(ValueError, match="not a finite number"):
        to_values(float("nan"), 1)
    with pytest.raises(ValueError, match="needs a list or tuple of 2 numbers"):
        to_values(1.0, 2)
    with pytest.raises(ValueError, match="1 value\\(s\\) for 2 directions"):
        to_values([1.0], 2)


def _failed_job(err: BaseException):
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(status=JobStatus.FAILED)
    ret.return_value = err
    return ret


def test_outcomes_and_the_failure_report():
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    assert outcome(_failed_job(optuna.TrialPruned("pruned at step 4")), 1).state.name == "PRUNED"
    ok = JobReturn(status=JobStatus.COMPLETED)
    ok.return_value = 2
    assert (outcome(ok, 1).state.name, outcome(ok, 1).values) == ("COMPLETE", [2.0])

    def job():
        raise RuntimeError("cfg.error is True")

    try:
        job()
    except RuntimeError as err:
        failed = outcome(_failed_job(err), 1)
    assert failed.state.name == "FAIL" and failed.reason == "RuntimeError: cfg.error is True"
    assert where(failed.error).endswith(" in job") and "test_optuna_space.py:" in where(failed.error)
    text = failure_report([(3, ["x=1", "y=2"], failed, "/sweep/3")], 2, 0.0)
    assert "1 of 2 trials of the last batch failed, above hydra.sweeper.max_failure_rate=0" in text
    assert "trial 3: x=1 y=2  ->  RuntimeError: cfg.error is True  [/sweep/3]" in text
    assert "First failure (trial 3): RuntimeError: cfg.error is True" in text
    assert 'raise RuntimeError("cfg.error is True")' in text  # the job's own traceback


def test_where_reads_a_remote_traceback():
    """A joblib worker's exception arrives without its traceback, with the text as its cause."""
    err = ValueError("bad")
    err.__cause__ = RuntimeError('\n"""\nTraceback (most recent call last):\n  File "/x/app.py", line 12, in '
                                 'task\n    raise ValueError("bad")\nValueError: bad\n"""')
    assert where(err) == "/x/app.py:12 in task"


def test_journal_storage_and_pruners(tmp_path):
    import optuna

    from hydralign.sweep.study import make_pruner, make_storage

    assert isinstance(make_storage(str(tmp_path / "s.journal")), optuna.storages.JournalStorage)
    assert make_storage("sqlite:///x.db") == "sqlite:///x.db"
    assert isinstance(make_pruner("successive_halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="choose one of"):
        make_pruner("bogus")


def test_a_job_finds_its_trial_from_the_environment(tmp_path):
    from hydralign.sweep.study import job_trial, write_study_file

    study = tmp_path / "study.json"
    write_study_file(study, {"study_name": "s", "storage": str(tmp_path / "s.journal"), "pruner": "none",
                             "directions": ["minimize", "maximize"]})
    ref = job_trial({"HYDRALIGN_OPTUNA_STUDY": str(study), "HYDRALIGN_OPTUNA_TRIAL_ID": "7",
                     "HYDRALIGN_OPTUNA_TRIAL_NUMBER": "3"})
    assert (ref.trial_id, ref.number, ref.multi_objective()) == (7, 3, True)
    assert job_trial({}) is None  # outside Hydra and without the variables: not a trial


def test_objective_fails_loudly_with_logged_names():
    from hydralign.run.job import objective

    assert objective({"val/loss": 0.5}, "val/loss") == 0.5
    with pytest.raises(KeyError, match=r"optimized_metric=val/acc was not logged.*\['val/loss'\]"):
        objective({"val/loss": 0.5}, "val/acc")
