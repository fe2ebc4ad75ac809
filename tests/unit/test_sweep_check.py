"""The multirun pre-check (hydralign.sweep.grid_check): a basic-sweeper grid is composed and planned cell by
cell before any job starts; run names come from the swept keys; the Optuna direction must fit."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from hydralign.config.store import register
from hydralign.sweep.cells import OPTUNA_SWEEPER, cell_name, fixed_keys, grid_cells
from hydralign.sweep.grid_check import bad_cells, direction_problem
from hydralign.sweep.grid_check import repeated_names as repeated
from tests.helpers import CONF


def check(task: list[str], fn, extra: list[str] | None = None):
    """Run ``fn(config)`` on the multirun config of ``python -m hydralign -m <task>``, Hydra initialized."""
    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(extra or []), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = task
        return fn(cfg)


def test_grid_cells_in_launch_order_and_names():
    task = ["batch.effective=8", "batch.micro=2,3", "seed=0,1"]
    cells = check(task, grid_cells)
    assert cells == [["batch.effective=8", "batch.micro=2", "seed=0"], ["batch.effective=8", "batch.micro=2", "seed=1"],
                     ["batch.effective=8", "batch.micro=3", "seed=0"], ["batch.effective=8", "batch.micro=3", "seed=1"]]
    fixed = check(task, fixed_keys)
    assert fixed == ["batch.effective"]
    assert [cell_name(c, fixed) for c in cells] == ["batch.micro=2 seed=0", "batch.micro=2 seed=1",
                                                    "batch.micro=3 seed=0", "batch.micro=3 seed=1"]
    assert check(["seed=0,0", "lr=1e-3,1e-2"], repeated) == ["seed=0 lr=0.001", "seed=0 lr=0.01"]


def test_bad_cells_are_listed_with_their_fix():
    total, bad = check(["batch.effective=8", "batch.micro=2,3,4", "trainer.max_steps=2"], bad_cells)
    assert total == 3 and [name for name, _ in bad] == ["batch.micro=3"]
    assert "batch.effective=8 is not divisible by world_size 1 x batch.micro 3" in bad[0][1]
    assert "Fix with one of: batch.micro=2 (grad_accum 4)" in bad[0][1]


def test_hardware_is_checked_per_cell_unless_dry_run():
    total, bad = check(["hardware=cpu,8xA100"], bad_cells)
    assert total == 2 and [name for name, _ in bad] == ["hardware=8xA100"]
    assert "needs 1 node(s) x 8 GPU(s)" in bad[0][1]
    assert check(["hardware=cpu,8xA100"], bad_cells, extra=["dry_run=true"]) == (2, [])


def test_optuna_sweeper_has_no_grid_and_its_direction_must_fit():
    def as_optuna(direction, metric):
        def fn(cfg):
            with open_dict(cfg):
                cfg.hydra.sweeper = {"_target_": OPTUNA_SWEEPER, "direction": direction}
                cfg.optimized_metric = metric
            return grid_cells(cfg), direction_problem(cfg)
        return fn

    cells, problem = check([], as_optuna("minimize", "val/exact_match"))
    assert cells is None and "add hydra.sweeper.direction=maximize" in problem
    assert check([], as_optuna("minimize", "val/loss")) == (None, None)
    assert check([], as_optuna(["minimize", "maximize"], ["val/loss", "val/exact_match"]))[1] is None
    _, problem = check([], as_optuna(["minimize", "minimize"], ["val/loss", "val/exact_match"]))
    assert "hydra.sweeper.direction=[minimize,maximize]" in problem
    _, problem = check([], as_optuna(["minimize", "maximize"], "val/loss"))
    assert "2 direction(s) for optimized_metric=['val/loss']: give one direction per metric" in problem
    assert check([], lambda cfg: direction_problem(cfg)) is None  # the basic sweeper has no direction
