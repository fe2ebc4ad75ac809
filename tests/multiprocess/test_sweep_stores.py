"""Stores that many nodes can share, for real: a local PostgreSQL holds both an ``mlflow server``'s
backend store and the Optuna study (RDB storage); a 4-job Optuna sweep runs its trials in 4 parallel
processes (joblib) that log over HTTP and report to the study, and nothing is lost on the way."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.pg import Unavailable, mlflow_server, postgres

pytestmark = pytest.mark.slow

TRIALS, STEPS, EVERY = 4, 8, 4
TINY = ["data.arithmetic.num_train=256", "data.arithmetic.num_val=32", "eval.num_generate=8",
        "eval.max_new_tokens=6", "trainer.enable_progress_bar=false", "checkpoint.export_hf=false",
        "trainer.log_every_n_steps=2", f"trainer.max_steps={STEPS}", f"eval.every_n_steps={EVERY}"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(PostgreSQL server, MLflow server URL, artifacts folder, tmp)."""
    tmp = tmp_path_factory.mktemp("stores")
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(postgres(("mlflow", "optuna")))
        except Unavailable as err:  # no PostgreSQL here (.ci/run installs it), or no user to run it as
            pytest.skip(str(err))
        url = stack.enter_context(mlflow_server(pg.url("mlflow"), tmp / "artifacts", tmp / "mlflow_server.log"))
        yield pg, url, tmp / "artifacts", tmp


PASSWORD = "hunter2-not-on-disk"


def secret_url(pg) -> str:
    return pg.url("optuna").replace(f"//{pg.user}@", f"//{pg.user}:{PASSWORD}@")


def secret_url_masked() -> str:
    return ":***@"


@pytest.fixture(scope="module")
def pg_sweep(stores):
    pg, url, artifacts, tmp = stores
    sweep_dir = tmp / "sweep"
    cmd = [sys.executable, "-m", "hydralign", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random",
           "hydra.sweeper.sampler.seed=0", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={TRIALS}",
           f"hydra.sweeper.n_jobs={TRIALS}", f"hydra.sweeper.n_trials={TRIALS}",
           "hydra.sweeper.storage=${oc.env:TEST_OPTUNA_URL}", "hydra.sweeper.study_name=pg_sweep",
           "hydra.sweeper.direction=minimize", "optimized_metric=val/loss", "lr=tag(log, interval(1e-4, 1e-2))",
           f"logger.tracking_uri={url}", *TINY, f"hydra.sweep.dir={sweep_dir}"]
    # The storage URL carries a password (the server's loopback ``trust`` ignores it), given as the README says:
    # through the environment, so Hydra's own files hold the interpolation and hydralign's hold it masked.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEST_OPTUNA_URL": secret_url(pg)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600, env=env)
    return out, sweep_dir, time.time() - started


def test_sweep_on_postgres_loses_no_trial_and_no_metric(stores, pg_sweep):
    pg, url, artifacts, _ = stores
    out, sweep_dir, seconds = pg_sweep
    assert out.returncode == 0, out.stderr[-4000:]

    # The study, read straight from PostgreSQL: every trial finished, with its value and its reports.
    spec = json.loads((sweep_dir / "study.json").read_text())
    assert spec["storage"] == secret_url(pg).replace(PASSWORD, "***")
    study = optuna.load_study(study_name="pg_sweep", storage=pg.url("optuna"))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert len({t.params["lr"] for t in trials}) == TRIALS
    for t in trials:  # each job process reported to the shared storage at every validation
        assert sorted(t.intermediate_values) == list(range(EVERY, STEPS + 1, EVERY)), t.intermediate_values

    # MLflow, through the server: the parent run and one child per trial with every metric.
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert info["tracking_uri"] == url
    client = MlflowClient(tracking_uri=url)
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweeper"] == "OptunaSweeper"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value, rel=1e-12)
    assert parent.data.tags["best.lr"] == str(study.best_params["lr"])
    runs = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(runs) == TRIALS
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    assert sorted(by_number) == list(range(TRIALS))
    for t in trials:
        run = by_number[t.number]
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
        assert run.data.tags["sweep_id"] == info["sweep_id"]
        assert float(run.data.params["lr"]) == pytest.approx(t.params["lr"], rel=1e-12)
        val = client.get_metric_history(run.info.run_id, "val/loss")
        assert [m.step for m in val] == list(range(0, STEPS + 1, EVERY))  # step 0: before training
        assert val[-1].value == pytest.approx(t.value, rel=1e-12)  # the objective the trial was told
        reported = {m.step: m.value for m in val if m.step}
        assert reported == pytest.approx(t.intermediate_values, rel=1e-12)
        train = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in train] == list(range(2, STEPS + 1, 2))
        # Artifacts went through the server into its --artifacts-destination.
        assert {"config.yaml", "plan.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(list(artifacts.rglob("config.yaml"))) == TRIALS

    # And the runs are in PostgreSQL itself, not in some local fallback store.
    direct = MlflowClient(tracking_uri=pg.url("mlflow"))
    assert len(direct.search_runs([info["experiment_id"]])) == TRIALS + 1
    assert not (sweep_dir.parent / "outputs" / "mlflow.db").exists()
    assert not (sweep_dir.parent / "outputs" / "optuna").exists()
    print(f"4-job sweep on PostgreSQL: {seconds:.0f} s")


def test_no_password_on_disk_or_in_mlflow(stores, pg_sweep):
    """Every file under the sweep folder (Hydra's included: they hold the interpolation) and every MLflow param and
    tag of the parent run and the jobs: no password."""
    _, url, artifacts, _ = stores
    out, sweep_dir, _ = pg_sweep
    assert out.returncode == 0, out.stderr[-4000:]
    files = [p for p in sweep_dir.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == "study.json" for p in files)
    leaked = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert PASSWORD not in out.stdout + out.stderr
    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert len(runs) >= TRIALS + 1
    for r in runs:
        assert not [k for k, v in {**r.data.params, **r.data.tags}.items() if PASSWORD in v], r.info.run_id
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert secret_url_masked() in results  # the storage, named without its password
