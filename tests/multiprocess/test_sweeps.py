"""Sweeps for real, as users run them (subprocesses, joblib workers, one shared SQLite store)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from hydralign.sweep.study import make_storage

pytestmark = pytest.mark.slow

TINY = ["data.arithmetic.num_train=512", "data.arithmetic.num_val=64", "eval.num_generate=16",
        "eval.max_new_tokens=6", "trainer.enable_progress_bar=false", "checkpoint.export_hf=false",
        "trainer.log_every_n_steps=2"]


def sweep(tmp: Path, *args: str, name: str = "sweep") -> tuple[subprocess.CompletedProcess, Path]:
    sweep_dir = tmp / name
    cmd = [sys.executable, "-m", "hydralign", "-m", *args, *TINY, f"hydra.sweep.dir={sweep_dir}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=900)
    return out, sweep_dir


def children(sweep_dir: Path):
    info = json.loads((sweep_dir / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return client, info, runs


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optuna")
    args = ["+sweeps=lr_search", "trainer.max_steps=24", "eval.every_n_steps=4", "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.pruner_kwargs.n_warmup_steps=0", "hydra.sweeper.pruner_kwargs.n_startup_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=6"]
    first = sweep(tmp, *args, name="first")
    again = sweep(tmp, *[a.replace("n_trials=6", "n_trials=8") for a in args], name="again")
    return tmp, first, again


def test_optuna_study_runs_prunes_and_continues(optuna_sweep):
    tmp, (out1, dir1), (out2, dir2) = optuna_sweep
    assert out1.returncode == 0, out1.stderr[-3000:]
    assert out2.returncode == 0, out2.stderr[-3000:]
    spec = json.loads((dir1 / "study.json").read_text())
    assert Path(spec["storage"]).is_relative_to(tmp / "outputs" / "optuna")  # journal file under outputs/
    study = optuna.load_study(study_name=spec["study_name"], storage=make_storage(spec["storage"]))
    states = [t.state for t in study.trials]
    assert len(states) == 8  # the second command continued the same study to 8 in total
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert optuna.trial.TrialState.PRUNED in states, states
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert max(t.intermediate_values) < 24  # stopped early
    results = (dir2 / "optimization_results.yaml").read_text()
    assert "best_params" in results and "lr:" in results and "n_trials: 8" in results
    assert "6 of 8 trials done" in out2.stdout + out2.stderr


def test_optuna_sweep_in_mlflow(optuna_sweep):
    """The study's one parent run: the second command, which continued the study, sent its 2 trials there too."""
    _, (_, dir1), (_, dir2) = optuna_sweep
    client, info, runs = children(dir1)
    assert json.loads((dir2 / "sweep.json").read_text())["parent_run_id"] == info["parent_run_id"]
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["sweeper"] == "OptunaSweeper" and parent.info.status == "FINISHED"
    assert "interval(1e-4, 1e-2)" in parent.data.tags["search_space"]
    assert parent.data.tags["command_line"].startswith("python -m hydralign")
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(runs) == 8
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(8))
    for r in runs:  # named by trial and sampled value, not MLflow's random names
        assert r.info.run_name.startswith(f"trial {r.data.tags['trial_number']}: lr=")
        assert r.data.tags["overrides"].startswith("lr=")
    assert len({r.info.run_name for r in runs}) == 8
    for r in runs:
        assert r.data.tags["sweep_id"] == info["sweep_id"]
        state = r.data.tags["trial_state"]
        assert (state, r.info.status) in {("COMPLETE", "FINISHED"), ("PRUNED", "KILLED")}


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    out = sweep(tmp, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3", "lr=1e-3,3e-3",
                "trainer.max_steps=10", "eval.every_n_steps=5", name="grid")
    return tmp, out


def test_parallel_jobs_lose_no_metric(grid_sweep):
    _, (out, sweep_dir) = grid_sweep
    assert out.returncode == 0, out.stderr[-3000:]
    client, _, runs = children(sweep_dir)
    assert len(runs) == 8
    for r in runs:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/loss")] == [0, 5, 10]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [2, 4, 6, 8, 10]
        tokens = client.get_metric_history(r.info.run_id, "train/tokens_seen")
        assert [m.step for m in tokens] == [2, 4, 6, 8, 10] and 0 < tokens[0].value < tokens[-1].value
        assert r.data.params["effective_batch"] == "32"


def test_grid_runs_are_named_by_their_cell(grid_sweep):
    _, (_, sweep_dir) = grid_sweep
    _, _, runs = children(sweep_dir)
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(f"seed={s} lr={lr}" for s in range(4) for lr in ("0.001", "0.003"))
    assert all(r.data.tags["overrides"] == r.info.run_name for r in runs)


def test_report_table_and_files(grid_sweep):
    _, (_, sweep_dir) = grid_sweep
    out = subprocess.run([sys.executable, "-m", "hydralign.report", str(sweep_dir)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "8 runs in 2 cell(s); cells differ in: lr; seeds pooled" in out.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in out.stdout and "--host 127.0.0.1" in out.stdout
    rows = (sweep_dir / "report.csv").read_text().splitlines()
    assert rows[0].startswith("lr,val/exact_match mean,val/exact_match std")
    assert len(rows) == 3 and all(",4,0,0," in row for row in rows[1:])  # 4 runs, 0 failed, 0 pruned
    for png in ("curves.png", "val_exact_match_vs_lr.png"):
        assert (sweep_dir / png).stat().st_size > 1000
    tokens = subprocess.run([sys.executable, "-m", "hydralign.report", str(sweep_dir), "--x", "tokens"],
                            capture_output=True, text=True, timeout=300)
    assert tokens.returncode == 0, tokens.stderr
    assert (sweep_dir / "curves_vs_tokens.png").stat().st_size > 1000


def test_failed_job_does_not_stop_the_others(tmp_path):
    out, sweep_dir = sweep(tmp_path, "data.max_seq_len=3,64", "trainer.max_steps=4", "eval.every_n_steps=2")
    assert out.returncode != 0  # the sweep reports the failure at the end...
    assert "no train example survived tokenization" in out.stderr
    client, info, runs = children(sweep_dir)
    assert client.get_run(info["parent_run_id"]).info.status == "FAILED"  # closed, not left RUNNING
    by_len = {r.data.params["data.max_seq_len"]: r for r in runs}
    assert by_len["3"].info.status == "FAILED" and by_len["3"].data.tags["trial_state"] == "FAIL"
    assert "no train example survived" in by_len["3"].data.tags["error"]
    assert by_len["64"].info.status == "FINISHED"  # ...after every job has run


def test_optuna_trial_with_a_bad_cell_fails_and_the_study_goes_on(tmp_path):
    """A config error in a cell Optuna sampled is that trial's FAIL; the other trial still trains."""
    out, sweep_dir = sweep(tmp_path, "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "batch.micro=choice(3,4)",
                           "batch.effective=8", "optimized_metric=val/loss", "hydra.sweeper.max_failure_rate=1.0",
                           "hydra.sweeper.n_jobs=1", "trainer.max_steps=2", "eval.every_n_steps=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch.effective=8 is not divisible by world_size 1 x batch.micro 3" in out.stdout + out.stderr
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "COMPLETE: 1" in results and "FAIL: 1" in results and "batch.micro: 4" in results


def test_two_objectives_log_the_pareto_front_to_the_parent(tmp_path):
    out, sweep_dir = sweep(tmp_path, "hydra/sweeper=optuna", "hydra/sweeper/sampler=nsgaii",
                           "lr=tag(log, interval(1e-4, 1e-2))", "optimized_metric=[val/loss,val/exact_match]",
                           "hydra.sweeper.direction=[minimize,maximize]", "hydra.sweeper.n_trials=2",
                           "hydra.sweeper.n_jobs=1", "trainer.max_steps=2", "eval.every_n_steps=2")
    assert out.returncode == 0, out.stderr[-3000:]
    client, info, runs = children(sweep_dir)
    parent = client.get_run(info["parent_run_id"])
    front = json.loads(parent.data.tags["pareto_front"])
    assert front and all(len(s["values"]) == 2 for s in front)
    assert parent.data.metrics["pareto_size"] == len(front) and len(runs) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_shows_the_sweep(grid_sweep):
    tmp, (_, sweep_dir) = grid_sweep
    info = json.loads((sweep_dir / "sweep.json").read_text())
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", info["tracking_uri"].split("?")[0],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        body = json.dumps({"experiment_ids": [info["experiment_id"]], "max_results": 100}).encode()
        deadline, runs = time.time() + 120, None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                             headers={"Content-Type": "application/json"})
                runs = json.loads(urllib.request.urlopen(req, timeout=5).read())["runs"]
                break
            except OSError:
                time.sleep(1)
        assert runs is not None, "mlflow server did not answer"
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        kids = [t for t in tags if t.get("mlflow.parentRunId") == info["parent_run_id"]]
        assert len(kids) == 8 and any(t.get("is_sweep_parent") == "true" for t in tags)
    finally:
        server.terminate()
        server.wait(timeout=30)
