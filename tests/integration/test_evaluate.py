"""``python -m hydralign.evaluate`` (issue 17): a checkpoint reference evaluated with lm-eval without training gives the
numbers the in-training harness gave at that step, as its own MLflow run with lineage; over three checkpoints of one
run (``-m``) it is one parent with a child per reference, and the report plots each metric against the step. The run's
returned metrics and ``metrics.json`` carry the newest ``eval/*``. Config errors are refused before anything loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from hydralign.cli import quote_references
from hydralign.harness.metrics import flatten_results
from hydralign.harness.standalone import evaluate_checkpoint
from hydralign.run.job import run
from tests.helpers import REPO, compose_cfg, tiny_cfg
from tests.integration.test_harness import write_tasks

HARNESS = ["eval.harness.tasks=[hydralign_arithmetic,sums_mc]", "eval.harness.limit=12"]
TRAIN = ["trainer.max_steps=6", "eval.every_n_steps=2", "checkpoint.every_n_steps=2", "eval.harness.every=checkpoint",
         "checkpoint.export_hf=false", *HARNESS]
METRICS = {"eval/hydralign_arithmetic/exact_match", "eval/sums_mc/acc"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step default-task run evaluated with each checkpoint (steps 2, 4, 6): (tmp, task folder, its metrics)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    tasks = write_tasks(tmp / "tasks")
    metrics = run(tiny_cfg(tmp, TRAIN + [f"eval.harness.include_path=[{tasks}]"]))
    return tmp, tasks, metrics


def in_training(run_dir, step: int) -> dict[str, float]:
    return flatten_results(json.loads((run_dir / "harness" / f"step{step:06d}.json").read_text()))


def test_a_run_returns_its_newest_harness_metrics(trained):
    tmp, _, metrics = trained
    final = in_training(tmp / "run", 6)
    assert set(final) == METRICS
    assert {k: metrics[k] for k in METRICS} == final  # eval/* reach what a sweep's optimized_metric reads
    written = json.loads((tmp / "run" / "metrics.json").read_text())
    assert {k: written[k] for k in METRICS} == final and "val/loss" in written


def test_evaluate_a_checkpoint_gives_the_in_training_numbers(trained, tmp_path):
    tmp, tasks, _ = trained
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(quote_references([f"init_from={tmp / 'run'}:step=4"]) + [*HARNESS, f"eval.harness.include_path=[{tasks}]",
                       f"logger.tracking_uri={store}"])
    metrics = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert metrics == in_training(tmp / "run", 4)  # the exported checkpoint, scored exactly as during training
    assert 0.0 < metrics["eval/sums_mc/acc"]

    client = MlflowClient(tracking_uri=store)
    run_id = (tmp_path / "eval" / "mlflow_run_id").read_text()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == f"{tmp / 'run'}:step=4"
    for name, value in metrics.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, name)] == [(4, value)]
    tags, params = logged.data.tags, logged.data.params
    assert tags["lineage.step"] == "4" and tags["lineage.selector"] == "step=4" and tags["source_step"] == "4"
    assert tags["lineage.source_run_id"] == (tmp / "run" / "mlflow_run_id").read_text()
    assert params["harness.lm_eval_version"] == "0.4.13" and params["harness.n_samples.sums_mc"] == "12"
    assert params["init_from"] == f"{tmp / 'run'}:step=4"
    assert [a.path for a in client.list_artifacts(run_id, "harness")] == ["harness/step000004.json"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics


def test_an_mlflow_run_reference_in_the_sources_store(trained, tmp_path):
    """``runs:/<id>:last`` is found through the source run's ``run_dir`` tag; the evaluation lands in that store."""
    tmp, tasks, _ = trained
    source_id = (tmp / "run" / "mlflow_run_id").read_text()
    cfg = compose_cfg(quote_references([f"init_from=runs:/{source_id}:last"]) + [
        "eval.harness.tasks=[sums_mc]", "eval.harness.limit=12", f"eval.harness.include_path=[{tasks}]",
        f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db"])
    metrics = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert metrics == {"eval/sums_mc/acc": in_training(tmp / "run", 6)["eval/sums_mc/acc"]}
    tags = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").get_run(
        (tmp_path / "eval" / "mlflow_run_id").read_text()).data.tags
    assert (tags["lineage.source_run_id"], tags["lineage.selector"], tags["source_step"]) == (source_id, "last", "6")


def _evaluate_cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hydralign.evaluate", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_an_evaluate_sweep_is_one_parent_with_a_child_per_checkpoint_and_its_report(trained, tmp_path):
    from hydralign import report

    tmp, tasks, _ = trained
    src, store, sweep = tmp / "run", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "sweep"
    refs = [f"{src}:step=2", f"{src}:step=4", f"{src}:last"]
    out = _evaluate_cli(["-m", f"init_from={','.join(refs)}", *HARNESS, f"eval.harness.include_path=[{tasks}]",
                         f"logger.tracking_uri={store}", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((sweep / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([info["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == info["parent_run_id"]]
    assert [p.info.run_id for p in parents] == [info["parent_run_id"]] and len(runs) == 4
    assert parents[0].data.tags["entry"] == "evaluate" and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["command_line"].startswith("python -m hydralign.evaluate -m init_from=")
    assert sorted(r.info.run_name for r in children) == sorted(refs)
    for child in children:  # each child: the numbers training gave at its checkpoint's step
        step = int(child.data.tags["source_step"])
        assert {k: child.data.metrics[k] for k in METRICS} == in_training(src, step)
    assert sorted(int(r.data.tags["source_step"]) for r in children) == [2, 4, 6]

    assert report.main([str(sweep)]) == 0
    plot = sweep / "eval_sums_mc_acc_vs_checkpoint_step.png"
    assert plot.stat().st_size > 1000 and (sweep / "eval_hydralign_arithmetic_exact_match_vs_checkpoint_step.png").is_file()
    rows, _ = report.fetch(store, info["parent_run_id"], [])
    points = report.checkpoint_points(rows, "eval/sums_mc/acc")
    assert list(points) == [(src / "mlflow_run_id").read_text()]  # one line: the source run
    assert points[list(points)[0]] == [(s, in_training(src, s)["eval/sums_mc/acc"]) for s in (2, 4, 6)]
    lines = (sweep / "report.csv").read_text().splitlines()
    assert lines[0].startswith("init_from,eval/hydralign_arithmetic/exact_match mean") and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == refs  # one row per checkpoint, by its step
    assert not (sweep / "curves.png").exists()  # nothing was trained: no training curves


@pytest.mark.parametrize("args, message", [
    (["eval.harness.tasks=[hydralign_arithmetic]"], "init_from is not set"),
    (["init_from=/nowhere:last"], "eval.harness.tasks is empty: give the lm-eval tasks to run"),
    (["init_from=/nowhere:last", "eval.harness.tasks=[hydralign_arithmetic]", "eval.harness.batch_size=0"],
     "eval.harness.batch_size=0 must be an integer >= 1"),
])
def test_config_errors_are_refused_before_anything_loads(tmp_path, args, message):
    out = _evaluate_cli(args + [f"hydra.run.dir={tmp_path}/h"], tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_a_sweep_with_a_reference_that_matches_nothing_starts_nothing(trained, tmp_path):
    tmp, _, _ = trained
    out = _evaluate_cli(["-m", f"init_from={tmp / 'run'}:step=2,{tmp / 'run'}:step=3",
                         "eval.harness.tasks=[hydralign_arithmetic]", f"logger.tracking_uri=sqlite:///{tmp_path}/m.db",
                         f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "1 of 2 evaluations of this sweep cannot run" in out.stderr and "no checkpoint at step 3" in out.stderr
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "sweep" / "sweep.json").exists()  # no parent run
