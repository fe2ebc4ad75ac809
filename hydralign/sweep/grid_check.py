"""Refuse a multirun before anything starts when one of its jobs cannot run.

A Hydra callback, first in ``hydra.callbacks`` (before the MLflow parent run exists). For Hydra's
basic sweeper, every cell of the grid is composed and planned (``make_plan``, and the hardware check
unless ``dry_run``): if any cell fails, no job runs and the message lists each bad cell with its
overrides and its fix (exit 2). Other sweepers (Optuna samples its cells as it goes) get the hardware
check of the base config; a sampled cell that fails its plan is that trial's FAIL. For the Optuna
sweeper, its direction(s) must fit ``optimized_metric`` (it minimizes unless told).

Jobs submitted to SLURM (``hydra/launcher=submitit_slurm``, ``hydralign.distributed.slurm``) run elsewhere: the machine
check is left to their tasks, and each cell must fit what the SLURM job asks for instead. With ``dry_run``
their plans are printed here and nothing is submitted.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hydralign.sweep.cells import OPTUNA_SWEEPER, cell_name, fixed_keys, grid_cells


def repeated_names(config: DictConfig) -> list[str]:
    """Names of grid cells that occur more than once (``seed=0,0``): their runs get the job number too."""
    cells = grid_cells(config)
    if cells is None:
        return []
    fixed = fixed_keys(config)
    counts = Counter(cell_name(c, fixed) for c in cells)
    return sorted(n for n, k in counts.items() if k > 1)


def check_cell(config: DictConfig, cell: list[str], loader: Any, hardware: bool,
               slurm_job: Optional[dict] = None) -> Optional[str]:
    """None if the cell composes and plans (and, with ``hardware``, this machine can run it; with ``slurm_job``,
    a SLURM job asking for that can); else why."""
    from hydralign.distributed.machine import check_machine
    from hydralign.distributed.slurm import resource_problem
    from hydralign.errors import ConfigError
    from hydralign.plan.core import make_plan

    try:
        cfg = loader.load_sweep_config(config, list(cell))
        make_plan(cfg)
        if hardware:
            check_machine(cfg.hardware)
        if slurm_job is not None:
            problem = resource_problem(slurm_job, cfg.hardware, fix=False)
            if problem:  # the launcher was made once, from the config without the swept values
                return (problem + ": one launcher submits every job of a multirun, so give the hardware on the "
                        "command line, one multirun per hardware, not as a swept value")
    except ConfigError as err:
        return str(err)
    except Exception as err:  # composition: an unknown option or key in this cell
        return f"{type(err).__name__}: {err}".strip()
    return None


def bad_cells(config: DictConfig) -> tuple[int, list[tuple[str, str]]]:
    """(number of cells, [(cell name, reason)]) of a basic-sweeper grid."""
    from hydra.core.global_hydra import GlobalHydra

    from hydralign.distributed.slurm import requested, submits_to_slurm

    cells = grid_cells(config) or []
    fixed = fixed_keys(config)
    loader = GlobalHydra.instance().config_loader()
    remote = submits_to_slurm(config)  # its jobs run on SLURM's nodes: this machine's hardware does not matter
    hardware = not config.get("dry_run", False) and not remote
    slurm_job = requested(config) if remote else None
    bad = []
    for cell in cells:
        reason = check_cell(config, cell, loader, hardware, slurm_job)
        if reason is not None:
            bad.append((cell_name(cell, fixed), reason))
    return len(cells), bad


def better_when(config: DictConfig, metric: str) -> Optional[str]:
    """``maximize`` or ``minimize`` for a metric hydralign logs, None when unknown."""
    if metric == OmegaConf.select(config, "checkpoint.monitor", default=None):
        return "maximize" if OmegaConf.select(config, "checkpoint.mode", default="max") == "max" else "minimize"
    name = metric.lower()
    if "loss" in name or "repetition" in name:
        return "minimize"
    if any(word in name for word in ("exact_match", "accurac", "margin")):
        return "maximize"
    return None


def direction_problem(config: DictConfig) -> Optional[str]:
    """A mismatch between the Optuna sweeper's direction(s) and ``optimized_metric``: its default is
    minimize (as in Hydra's official plugin), which would silently make val/exact_match worse."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != OPTUNA_SWEEPER:
        return None
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default="minimize")
    directions = [str(d).lower() for d in (direction if OmegaConf.is_list(direction) else [direction])]
    names = OmegaConf.select(config, "optimized_metric", default=None)
    if not names:
        return "optimized_metric=null: the jobs would return nothing to optimize; set optimized_metric=<metric>"
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    expected = [better_when(config, n) or d for n, d in zip(names, directions)]
    if len(names) != len(directions):
        return (f"hydra.sweeper.direction={directions} has {len(directions)} direction(s) for optimized_metric="
                f"{names}: give one direction per metric")
    if expected != directions:
        shown = expected[0] if len(expected) == 1 else "[" + ",".join(expected) + "]"
        return (f"hydra.sweeper.direction={directions if len(directions) > 1 else directions[0]} does not fit "
                f"optimized_metric={names if len(names) > 1 else names[0]}: add hydra.sweeper.direction={shown} "
                "(the Optuna sweeper minimizes unless told, as Hydra's official plugin does)")
    return None


def print_slurm_dry_run(config: DictConfig) -> None:
    """Each job's plan (a grid's cells, else the base config's), and what its SLURM job would ask for."""
    from hydra.core.global_hydra import GlobalHydra

    from hydralign.distributed.slurm import describe, requested
    from hydralign.plan.core import make_plan
    from hydralign.plan.format import format_plan

    cells = grid_cells(config)
    loader = GlobalHydra.instance().config_loader()
    configs = [(f"job {i}: {' '.join(c) or '(defaults)'}", loader.load_sweep_config(config, list(c)))
               for i, c in enumerate(cells)] if cells is not None else [("plan (each trial)", config)]
    for title, cfg in configs:
        print(format_plan(make_plan(cfg), title=title), flush=True)
    count = f"{len(cells)} SLURM job(s)" if cells is not None else "one SLURM job per trial"
    print(f"dry run: nothing submitted; hydra/launcher=submitit_slurm would submit {count}, each asking for "
          f"{describe(requested(config))}", flush=True)


def shared_store_note(config: DictConfig) -> Optional[str]:
    """A note when jobs on SLURM's nodes would write to an MLflow store kept in a file (SQLite)."""
    import os

    if OmegaConf.select(config, "logger.name", default=None) != "mlflow":
        return None
    uri = OmegaConf.select(config, "logger.tracking_uri", default=None) or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and not uri.startswith(("sqlite:", "file:")) and "://" in uri:
        return None
    return (f"note: the jobs will write to the MLflow store {uri or 'outputs/mlflow.db (SQLite)'}, a file; jobs on "
            "several nodes need a server they share: logger.tracking_uri=http://<host>:5000 (README, \"Stores "
            "for multi-node sweeps\")")


def refuse(message: str) -> None:
    print(f"hydralign: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class GridCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydralign.distributed.slurm import requested, resource_problem, submits_to_slurm

        problem = direction_problem(config)
        if problem:
            refuse(problem)
        dry_run = bool(config.get("dry_run", False))
        remote = submits_to_slurm(config)  # the jobs run on SLURM's nodes, checked there
        if remote:
            problem = resource_problem(requested(config), config.hardware)
            if problem:
                refuse(problem)
        if grid_cells(config) is not None:
            started = time.perf_counter()
            total, bad = bad_cells(config)
            if bad:
                lines = [f"{len(bad)} of {total} cells of this grid cannot run, so no job was started "
                         f"(checked in {time.perf_counter() - started:.1f} s):"]
                lines += [f"  {name}: {reason}" for name, reason in bad]
                refuse("\n".join(lines))
        elif not dry_run and not remote:
            from hydralign.distributed.machine import check_machine
            from hydralign.errors import ConfigError

            try:  # a preset this machine cannot run fails every trial alike
                check_machine(config.hardware)
            except ConfigError as err:
                refuse(str(err))
        if remote and dry_run:
            print_slurm_dry_run(config)
            sys.exit(0)
        note = shared_store_note(config) if remote else None
        if note:
            print(f"hydralign: {note}", file=sys.stderr, flush=True)
