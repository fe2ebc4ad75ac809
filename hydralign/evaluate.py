"""``python -m hydralign.evaluate init_from=<reference> eval.harness.tasks=[...]``: evaluate a checkpoint with
lm-eval, without training, as its own MLflow run (``hydralign.harness.standalone``). ``-m`` with several references
(``init_from=R:step=200,R:step=400,R:last``) is one MLflow parent run with a child per checkpoint, named by its
reference; ``python -m hydralign.report`` on that sweep plots each metric against the checkpoint's step.

The config is ``python -m hydralign``'s (same folder, store and overrides); only ``init_from`` and ``eval.harness.*``
are read. They are checked before anything heavy is imported: a missing reference or task list is refused at once,
saying what to set (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from hydralign.cli import _FLAGS, _in_multirun, config_dir, quote_references, unknown_option
from hydralign.config.store import register
from hydralign.errors import ConfigError, DataError
from hydralign.sweep.evaluate_sweep import (
    CALLBACKS,  # training's multirun callbacks replaced: no training plan
)


def task(cfg: DictConfig) -> Optional[float]:
    from hydralign.plan.harness import check_evaluation

    try:
        reference, tasks = check_evaluation(cfg)
        if cfg.dry_run:
            print(f"evaluate {reference} on {', '.join(tasks)} (dry run: nothing loaded)", flush=True)
            return None
        from hydralign.run.console import configure_console
        from hydralign.run.trainer import default_run_dir

        configure_console()
        from hydralign.harness.standalone import evaluate_checkpoint

        metrics = evaluate_checkpoint(cfg, Path(cfg.run_dir) if cfg.run_dir else default_run_dir())
    except (ConfigError, DataError) as err:
        print(f"hydralign.evaluate: {err}", file=sys.stderr, flush=True)
        if _in_multirun():
            raise  # this job fails, the sweep goes on
        sys.exit(2)
    name = cfg.optimized_metric  # training's default (val/exact_match) is not an evaluation's: only eval/* count
    if isinstance(name, str) and name.startswith("eval/"):
        if name not in metrics:
            raise KeyError(f"optimized_metric={name} was not measured; measured: {sorted(metrics)}")
        return metrics[name]
    return None


def main() -> None:
    args = sys.argv[1:]
    problem = unknown_option(args)
    if problem:
        print(f"hydralign.evaluate: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    flags = [a for a in args if a in _FLAGS]
    sys.argv = sys.argv[:1] + flags + CALLBACKS + quote_references([a for a in args if a not in _FLAGS])
    register()
    hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(task)()


if __name__ == "__main__":
    main()
