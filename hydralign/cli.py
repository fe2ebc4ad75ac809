"""``python -m hydralign``: compose the config, plan, then train (or print the plan with dry_run=true).

Only Hydra, OmegaConf and the pure plan are imported before the plan has been checked, so config
errors and dry runs return in about a second.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from hydralign.config.store import register
from hydralign.distributed.preemption import PREEMPTED_EXIT, Preempted, after_preemption
from hydralign.errors import ConfigError, DataError


def config_dir() -> str:
    """conf/ travels inside the package in a wheel; in a source checkout it sits beside the package."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return str(packaged if packaged.is_dir() else here.parent / "conf")


def _job_title() -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:
        return "plan"
    overrides = " ".join(hc.overrides.task) or "(defaults)"
    num = hc.job.get("num", None)
    return f"job {num}: {overrides}" if num is not None else f"plan: {overrides}"


def task(cfg: DictConfig) -> Optional[float]:
    started = time.time()
    from hydralign.distributed.machine import check_generation_backend, check_machine
    from hydralign.plan.core import make_plan
    from hydralign.plan.format import format_plan

    try:
        plan = make_plan(cfg)
        if cfg.dry_run:
            print(format_plan(plan, title=_job_title()), flush=True)
            return None
        from hydralign.distributed.slurm import join_slurm_step

        _refuse_slurm_single_run()
        join_slurm_step()  # a task of a SLURM job (submitit, srun): this process is one rank of it
        check_machine(cfg.hardware)
        check_generation_backend(cfg, plan)  # generation.backend=vllm: the package its engines import
        from hydralign.distributed.generator_tasks import (
            end_generator_tasks,
            join_generator_tasks,
            serve_task,
        )
        from hydralign.run.console import configure_console
        from hydralign.run.job import objective, run

        configure_console()
        from hydralign.distributed.launch import apply_env, launch, needs_launch

        apply_env(cfg.hardware)  # NCCL settings, before any process group (ranks started below inherit them)
        role = join_generator_tasks(cfg.hardware)  # torchrun/srun with generator devices: the last ranks generate
        if role == "generator":
            serve_task(cfg)
            return None
        if needs_launch(cfg.hardware):  # one node, several devices: hydralign starts the ranks itself
            from hydralign.run.trainer import default_run_dir

            metrics = launch(cfg, Path(cfg.run_dir) if cfg.run_dir else default_run_dir())
        else:
            try:
                metrics = run(cfg, started=started, plan=plan)
            finally:
                end_generator_tasks()  # learner 0 of a split launch: the generator tasks end with the run
    except Preempted as stopped:
        print(f"hydralign: {stopped}", file=sys.stderr, flush=True)
        from hydralign.run.references import rank_zero

        after_preemption(stopped, rank_zero())  # rank 0 of a SLURM job warned of its time limit: requeued
        sys.exit(PREEMPTED_EXIT)  # not an error of this job: a multirun stops here (and a submitit job leaves no result)
    except (ConfigError, DataError) as err:
        print(f"hydralign: {err}", file=sys.stderr, flush=True)
        if _in_multirun():
            # This job fails and the sweep goes on. A basic-sweeper grid was planned cell by cell before
            # it started (hydralign.sweep.grid_check), so here it is a cell an Optuna sweeper sampled, or an
            # error only the loaded data reveals.
            raise
        sys.exit(2)
    names = cfg.optimized_metric
    if not names:
        return None
    if isinstance(names, str):
        return objective(metrics, names)
    return tuple(objective(metrics, name) for name in names)  # one value per direction of the study


def _refuse_slurm_single_run() -> None:
    """Hydra hands only multiruns to a launcher: without -m, hydra/launcher=submitit_slurm would run the job
    here, on the login node."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from hydralign.distributed.slurm import SLURM_LAUNCHER

    try:
        target = OmegaConf.select(HydraConfig.get(), "launcher._target_", default=None)
    except ValueError:
        return
    if target == SLURM_LAUNCHER and not _in_multirun():
        raise ConfigError("hydra/launcher=submitit_slurm submits the jobs of a multirun only: add -m (one job "
                          "is a multirun of one); without it the job would run here")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


_FLAGS = ("-m", "--multirun")


def _flags_first(argv: list[str]) -> list[str]:
    """argparse stops reading flags once overrides start; users write ``... hardware=x -m lr=a,b``."""
    head, rest = argv[:1], argv[1:]
    return head + [a for a in rest if a in _FLAGS] + [a for a in rest if a not in _FLAGS]


def _reference_keys() -> tuple[str, ...]:
    from hydralign.checkpoints.references import REFERENCES

    return (*REFERENCES, "resume")  # values that may carry a :step=N-like selector


def _quoted(value: str) -> str:
    """``value`` as one Hydra quoted string. Inside quotes Hydra reads a backslash literally unless it precedes
    the quote (or ends the string), so only those are doubled and only the quote character is escaped."""
    q = "'" if "'" not in value else '"'
    body = re.sub(r"(\\*)" + q, lambda m: m.group(1) * 2 + "\\" + q, value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return q + body + q


def quote_references(args: list[str]) -> list[str]:
    """``init_from=<run>:step=1000`` (and ``:epoch=N``, ``:best=<metric>,<mode>``) as the README writes them:
    Hydra's override grammar reads a bare ``=`` or a ``,`` in a value as syntax, so such a value is quoted for
    it. A comma list of references (a sweep, ``-m init_from=a:step=100,a:step=200``) becomes a list of quoted
    values; a value already quoted, a sweep function (``choice(...)``, ``glob(...)``) or an interpolation is
    left to Hydra as written."""
    keys, out = _reference_keys(), []
    for arg in args:
        key, eq, value = arg.partition("=")
        if (not eq or key.lstrip("+~") not in keys or "=" not in value or value[:1] in "'\""
                or "${" in value or re.match(r"^\w+\(", value)):
            out.append(arg)
            continue
        pieces: list[str] = []
        for piece in value.split(","):
            if pieces and piece in ("min", "max") and ":best=" in pieces[-1]:
                pieces[-1] += "," + piece  # :best=<metric>,<mode> is one selector
            else:
                pieces.append(piece)
        out.append(f"{key}={','.join(_quoted(p) for p in pieces)}")
    return out


def unknown_option(args: list[str]) -> Optional[str]:
    """An override that picks a config group option that does not exist (``experiment=misspelled``),
    said with the options that do; None when every one exists. Hydra would stop on it too, but with
    exit code 1, and a misspelled card must never fall back to the default job."""
    if any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath", "+hydra.searchpath"))
           for a in args):
        return None  # options may come from elsewhere: Hydra itself checks them
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.hydralign_searchpath import sweeps_root

    folders = {p.name: p for p in Path(config_dir()).iterdir() if p.is_dir()}
    folders["sweeps"] = sweeps_root() / "sweeps"
    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            [ov] = parser.parse_overrides([arg])
        except Exception:
            continue  # Hydra reports grammar errors itself
        group = ov.key_or_group
        if group not in folders or ov.is_delete() or (ov.is_sweep_override() and not ov.is_choice_sweep()):
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        options = sorted(p.stem for p in folders[group].glob("*.yaml"))
        for value in values:
            if value != "null" and value not in options:
                what = {"experiment": "card", "sweeps": "sweep file"}.get(group, f"{group} option")
                return f"{group}={value}: no such {what}; choose one of: {', '.join(options)}"
    return None


def main() -> None:
    sys.argv = _flags_first(sys.argv)
    sys.argv = sys.argv[:1] + quote_references(sys.argv[1:])
    problem = unknown_option(sys.argv[1:])
    if problem:
        print(f"hydralign: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    register()
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(task)()


if __name__ == "__main__":
    main()
