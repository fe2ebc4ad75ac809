"""The sweep report's pure parts: cells from differing params, curves against steps, examples or tokens
seen, and the spread over seeds."""

from __future__ import annotations

import pytest

from hydralign.report import TOKENS_KEY, RunRow, curves, group_cells, plot, x_of


def run(run_id: str, eff: int, seed: int) -> RunRow:
    return RunRow(run_id, "FINISHED", "COMPLETE", {"batch.effective": str(eff), "effective_batch": str(eff),
                                                   "seed": str(seed)}, {"val/loss": 1.0})


RUNS = [run("a", 16, 0), run("b", 16, 1), run("c", 64, 0), run("d", 64, 1)]
HIST = {
    ("a", "val/loss"): [(0, 4.0), (10, 2.0)], ("b", "val/loss"): [(0, 4.0), (10, 3.0)],
    ("c", "val/loss"): [(0, 4.0), (10, 1.0)], ("d", "val/loss"): [(0, 4.0), (10, 1.0)],
    ("a", TOKENS_KEY): [(5, 500.0), (10, 1000.0)], ("b", TOKENS_KEY): [(5, 520.0), (10, 1040.0)],
}


def test_cells_pool_seeds():
    keys, cells = group_cells(RUNS)
    assert keys == ["batch.effective"] and [len(c.runs) for c in cells] == [2, 2]


def test_x_axes():
    a, c = RUNS[0], RUNS[2]
    assert x_of(a, 10, HIST, "step") == 10.0
    assert (x_of(a, 10, HIST, "examples"), x_of(c, 10, HIST, "examples")) == (160.0, 640.0)
    assert x_of(a, 0, HIST, "tokens") == 0.0 and x_of(a, 10, HIST, "tokens") == 1000.0
    assert x_of(a, 7, HIST, "tokens") == pytest.approx(700.0)  # between two logged steps: linear
    assert x_of(a, 12, HIST, "tokens") is None  # after the last logged count: unknown


def test_curves_mean_and_spread_over_seeds():
    _, cells = group_cells(RUNS)
    small, large = cells
    assert curves(small, HIST, "val/loss", "examples") == [(0.0, 4.0, 0.0, 2),
                                                           (160.0, 2.5, pytest.approx(0.7071, abs=1e-4), 2)]
    assert curves(large, HIST, "val/loss", "examples")[-1] == (640.0, 1.0, 0.0, 2)
    assert curves(small, HIST, "val/loss", "tokens")[-1][0] == pytest.approx(1020.0)  # mean over seeds


@pytest.mark.parametrize("axis, name", [("step", "curves.png"), ("examples", "curves_vs_examples.png")])
def test_plot_writes_the_curves(tmp_path, axis, name):
    keys, cells = group_cells(RUNS)
    written = plot(tmp_path, keys, cells, HIST, "val/loss", "val/loss", axis)
    assert written[0] == tmp_path / name and written[0].stat().st_size > 1000


def _sweep_store(tmp_path, method: str, metrics: dict[str, float], params: dict[str, list[str]]):
    """A parent run and one child per value of the swept param, tagged as hydralign's jobs are (method, state)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("hydralign", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="sweep").info.run_id
    (key, values), = params.items()
    children = []
    for i, value in enumerate(values):
        child = client.create_run(exp, run_name=f"{key}={value}", tags={
            "mlflow.parentRunId": parent, "method": method, "trial_state": "COMPLETE"}).info.run_id
        client.log_param(child, key, value)
        client.log_param(child, "method.name", method)
        for name, base in metrics.items():
            client.log_metric(child, name, base + i, step=10)
        client.set_terminated(child, "FINISHED")
        children.append(child)
    return uri, parent, exp, children


def test_a_dpo_sweeps_report_speaks_dpo(tmp_path, capsys):
    from hydralign import report

    logged = {"val/rewards/accuracies": 0.5, "val/rewards/margins": 0.1, "val/loss": 0.7, "val/exact_match": 0.2,
              "eval/gsm8k/exact_match_strict-match": 0.3}
    uri, parent, exp, children = _sweep_store(tmp_path, "dpo", logged, {"method.beta": ["0.1", "0.5"]})
    assert report.main([parent, "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--metrics",
                        "train/loss"]) == 0
    out = capsys.readouterr().out
    header = (tmp_path / "out" / "report.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["method.beta", "train/loss mean", "train/loss std", "val/rewards/accuracies mean",
                          "val/rewards/accuracies std", "val/rewards/margins mean", "val/rewards/margins std",
                          "val/loss mean", "val/loss std"]
    assert "eval/gsm8k/exact_match_strict-match mean" in header and "val/exact_match mean" not in header
    assert "val/rewards/margins" in out.splitlines()[1]  # the printed table's header row
    link = f'http://127.0.0.1:5000/#/compare-runs?runs=["{children[1]}","{children[0]}"]&experiments=["{exp}"]'
    link_reversed = link.replace(children[1], "X").replace(children[0], children[1]).replace("X", children[0])
    assert out.rstrip().splitlines()[-1].strip() in (link, link_reversed)


def test_the_columns_follow_each_method_in_the_runs():
    from hydralign.methods.specs import METHODS
    from hydralign.report import metric_columns

    def rows(*methods):
        return [RunRow(m, "FINISHED", "COMPLETE", {"method.name": m}, {}, {"method": m}) for m in methods]

    assert metric_columns(rows("sft"), []) == ["val/exact_match", "val/exact_match_flex", "val/loss"]
    assert metric_columns(rows("grpo"), [])[:2] == ["rewards/mean", "accuracy"]
    assert metric_columns(rows("distill"), [])[0] == "distill/nll"
    assert metric_columns(rows("sft", "dpo"), ["x"]) == ["x", *METHODS["sft"].report_metrics,
                                                        "val/rewards/accuracies", "val/rewards/margins"]
    evaluated = [RunRow("e", "FINISHED", "COMPLETE", {"init_from": "r:last"}, {"eval/t/acc": 1.0}, {"entry": "evaluate"})]
    assert metric_columns(evaluated, []) == ["eval/t/acc"]
