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
