"""Passwords in storage and tracking URLs never reach a file or MLflow (hydralign.secrets); ranks other than 0
never reach the store."""

from __future__ import annotations

import pytest

from hydralign.secrets import MASK, STORAGE_ENV, has_password, redact, redact_tree
from hydralign.sweep.study import storage_of
from hydralign.tracking.recorder import config_params
from tests.helpers import compose_cfg


@pytest.mark.parametrize("text, expected", [
    ("postgresql://u:hunter2@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
    ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unescaped @ in the password
    ("see mysql://x:y@z/w and postgresql://me:pw@h/db", "see mysql://x:***@z/w and postgresql://me:***@h/db"),
    ("postgresql://u@h:1/db", "postgresql://u@h:1/db"),  # no password
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("/path/to/study.journal", "/path/to/study.journal"),
])
def test_redact(text, expected):
    assert redact(text) == expected
    assert has_password(text) == (text != expected)


def test_redact_tree_masks_every_string_and_keeps_the_rest():
    tree = {"a": ["postgresql://u:pw@h/db", 3], "b": {"c": "mysql://x:y@z/w"}, "d": None}
    assert redact_tree(tree) == {"a": ["postgresql://u:***@h/db", 3], "b": {"c": "mysql://x:***@z/w"}, "d": None}


def test_a_jobs_storage_comes_from_the_environment_when_the_file_masks_it():
    real = "postgresql://u:pw@h:5/optuna"
    spec = {"storage": redact(real)}
    assert storage_of(spec, {STORAGE_ENV: real}) == real
    assert storage_of({"storage": "/x/study.journal"}, {}) == "/x/study.journal"
    with pytest.raises(RuntimeError, match=STORAGE_ENV):
        storage_of(spec, {})
    with pytest.raises(RuntimeError, match=STORAGE_ENV):  # another store's URL is not taken for this one
        storage_of(spec, {STORAGE_ENV: "postgresql://u:pw@other:5/optuna"})


def test_mlflow_params_of_a_run_hold_no_password():
    from hydralign.plan import make_plan

    cfg = compose_cfg(["logger.tracking_uri=postgresql://me:s3cret@db:5432/mlflow"])
    params = config_params(cfg, make_plan(cfg))
    assert params["logger.tracking_uri"] == f"postgresql://me:{MASK}@db:5432/mlflow"
    assert not [k for k, v in params.items() if "s3cret" in v]


def test_only_rank_zero_touches_the_store(tmp_path, monkeypatch):
    """A rank other than 0 opens its recorder (and Lightning's logger) without one round trip to the store."""
    import mlflow.tracking

    from hydralign.plan import make_plan
    from hydralign.tracking.recorder import RunRecorder

    def no_store(*args, **kwargs):
        raise AssertionError("a rank other than 0 reached the MLflow store")

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", no_store)
    cfg = compose_cfg([f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    recorder = RunRecorder.open(cfg, make_plan(cfg), tmp_path, None, {}, rank_zero=False)
    assert recorder.logger is None and not recorder.writes  # Lightning's logger too would open the store
    recorder.log_metric("time/startup_seconds", 1.0)
    recorder.finish("COMPLETE")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow_run_id").exists()
