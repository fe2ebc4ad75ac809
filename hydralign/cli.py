"""``python -m hydralign``: compose the config, plan, then train (or print the plan with dry_run=true).

Only Hydra, OmegaConf and the pure plan are imported before the plan has been checked, so config
errors and dry runs return in about a second.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from hydralign.config.schema import register
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
    from hydralign.hardware import check_machine
    from hydralign.plan import format_plan, make_plan

    try:  # config errors stop everything, in a multirun too: every job would fail the same way
        plan = make_plan(cfg)
        if cfg.dry_run:
            print(format_plan(plan, title=_job_title()), flush=True)
            return None
        check_machine(cfg.hardware)
    except ConfigError as err:
        print(f"hydralign: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    from hydralign.train import objective, run

    try:
        metrics = run(cfg, started=started)
    except (ConfigError, DataError) as err:
        print(f"hydralign: {err}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise  # this job fails; the sweep goes on with the others
        sys.exit(2)
    return objective(metrics, cfg.optimized_metric) if cfg.optimized_metric else None


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


def main() -> None:
    sys.argv = _flags_first(sys.argv)
    register()
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(task)()


if __name__ == "__main__":
    main()
