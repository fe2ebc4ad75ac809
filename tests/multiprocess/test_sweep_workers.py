"""Several sweepers on one study (the same command started twice, as on two nodes): they share n_trials and never
fail each other's running trials; a sweeper killed mid-trial leaves its trial RUNNING only until the grace period,
then another fails it and runs it again with the same parameters (hydra_plugins/.../_heartbeat.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

pytestmark = pytest.mark.slow
State = optuna.trial.TrialState
JOB = ["data.arithmetic.num_train=256", "data.arithmetic.num_val=16", "eval.num_generate=0",
       "eval.at_start=false", "checkpoint.export_hf=false", "checkpoint.save_last=false", "checkpoint.monitor=val/loss",
       "checkpoint.mode=min", "optimized_metric=val/loss", "trainer.enable_progress_bar=false"]


def _sweeper(tmp, journal, seed: int, trials: int, steps: int, extra=("logger=none",)) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hydralign", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random",
           f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.n_jobs=1", f"hydra.sweeper.n_trials={trials}",
           f"hydra.sweeper.storage={journal}", "hydra.sweeper.study_name=shared", "hydra.sweeper.direction=minimize",
           "lr=tag(log, interval(1e-4, 1e-2))", f"trainer.max_steps={steps}", f"eval.every_n_steps={steps}", *JOB,
           f"hydra.sweep.dir={tmp / f'sweep{seed}'}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _study(storage):
    from hydralign.sweep.study import make_storage

    return optuna.load_study(study_name="shared", storage=make_storage(str(storage)))


def _until_running(storage, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if _study(storage).get_trials(deepcopy=False, states=(State.RUNNING,)):
                return
        except (KeyError, ValueError):  # the study is not created yet
            pass
        time.sleep(0.5)
    raise TimeoutError("no trial started")


@pytest.fixture(params=["journal", "postgresql"])
def storage(request, tmp_path):
    if request.param == "journal":
        yield tmp_path / "study.journal"
        return
    from tests.pg import Unavailable, postgres

    try:
        with postgres(("optuna",)) as pg:
            yield pg.url("optuna")
    except Unavailable as err:
        pytest.skip(str(err))


def test_two_sweepers_share_one_study(tmp_path, storage):
    """The second starts while the first runs a trial (the old sweeper failed every RUNNING trial it found). Every
    trial is a child of the study's one MLflow parent run (the second sweeper's own parent is deleted)."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = ("logger=mlflow", f"logger.tracking_uri={store}")
    first = _sweeper(tmp_path, storage, 1, 6, 4, tracked)
    _until_running(storage)
    time.sleep(2)
    second = _sweeper(tmp_path, storage, 2, 6, 4, tracked)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs[0][-2000:] + outs[1][-2000:]
    trials = _study(storage).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 6, [(t.number, t.state.name) for t in trials]
    assert all("no heartbeat" not in out for out in outs)
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("hydralign").experiment_id])  # deleted ones left out
    parents = [r for r in runs if r.data.tags.get("is_sweep_parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6, [(r.info.run_name, r.data.tags.get("mlflow.parentRunId"))
                                                       for r in runs]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert _study(storage).user_attrs["hydralign:mlflow_parent_run_id"] == parents[0].info.run_id


def test_a_killed_sweepers_trial_fails_after_the_grace_period_and_runs_again(tmp_path):
    journal = tmp_path / "study.journal"
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4", "hydra.sweeper.retry_failed_trials=1"]
    doomed = _sweeper(tmp_path, journal, 1, 3, 60, beat)
    _until_running(journal)
    time.sleep(1)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    lost = _study(journal).get_trials(deepcopy=False, states=(State.RUNNING,))
    assert len(lost) == 1
    survivor = _sweeper(tmp_path, journal, 2, 3, 60, beat)
    out = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, out[-3000:]
    trials = _study(journal).get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == State.FAIL]
    assert [t.number for t in failed] == [lost[0].number], [(t.number, t.state.name) for t in trials]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost[0].number]
    assert len(retry) == 1 and retry[0].state == State.COMPLETE and retry[0].params == lost[0].params
    assert retry[0].system_attrs["retry_history"] == [lost[0].number]
    assert sum(t.state == State.COMPLETE for t in trials) == 3  # n_trials counts the retry, not the failed one
    assert f"trial {lost[0].number}: no heartbeat" in out
