"""``python -m hydralign.evaluate -m init_from=R:step=200,R:step=400,R:last``: the Hydra callbacks that stand in for
training's (``hydralign.evaluate`` selects them), so an evaluation sweep is checked and tracked like a training one.

- ``EvaluateGridCheck`` (in place of ``GridCheck``): every cell of a grid composed, its evaluation config checked
  (``plan.harness.check_evaluation``) and its reference resolved, before anything starts; a bad cell stops the sweep
  (exit 2) with its reason. There is no training plan to make.
- ``EvaluateSweepTracking`` (in place of ``SweepTracking``, whose parent run it makes): the parent named and tagged
  as an evaluation sweep (``entry=evaluate``, its command line); each job is a child named by its reference.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hydralign.sweep.cells import cell_name, fixed_keys, grid_cells
from hydralign.sweep.grid_check import refuse
from hydralign.sweep.parent_run import SweepTracking

ENTRY = "python -m hydralign.evaluate"
# What hydralign.evaluate adds to its command line: these callbacks in place of training's.
CALLBACKS = [f"hydra.callbacks.grid_check._target_={__name__}.EvaluateGridCheck",
             f"hydra.callbacks.sweep_tracking._target_={__name__}.EvaluateSweepTracking"]


def check_cell(cfg: DictConfig) -> Optional[str]:
    """None if this evaluation can start (config complete, reference found); else why."""
    from hydralign.checkpoints.references import forget, resolve_reference
    from hydralign.errors import ConfigError
    from hydralign.plan.harness import check_evaluation

    try:
        reference, _ = check_evaluation(cfg)
        forget()
        resolve_reference(reference, cfg.logger.tracking_uri)
    except ConfigError as err:
        return str(err)
    finally:
        forget()  # each job resolves afresh when it runs
    return None


class EvaluateGridCheck(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        started = time.perf_counter()
        cells = grid_cells(config)
        loader = GlobalHydra.instance().config_loader()
        bad = []
        for cell in cells if cells is not None else [None]:  # other sweepers: the base config
            try:
                cfg = loader.load_sweep_config(config, list(cell)) if cell is not None else config
                reason = check_cell(cfg)
            except Exception as err:  # composition: an unknown key in this cell
                reason = f"{type(err).__name__}: {err}".strip()
            if reason is not None:
                bad.append((cell_name(cell, fixed_keys(config)) if cell is not None else "(base config)", reason))
        if bad:
            total = len(cells) if cells is not None else 1
            lines = [f"{len(bad)} of {total} evaluations of this sweep cannot run, so none was started (checked in "
                     f"{time.perf_counter() - started:.1f} s):"] + [f"  {name}: {reason}" for name, reason in bad]
            refuse("\n".join(lines))


class EvaluateSweepTracking(SweepTracking):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        super().on_multirun_start(config, **kwargs)
        from hydralign.tracking.recorder import PARENT_ENV, SWEEP_ID_ENV

        parent = os.environ.get(PARENT_ENV)
        if not parent:
            return
        from mlflow.tracking import MlflowClient

        from hydralign.harness.metrics import ENTRY_TAG
        from hydralign.secrets import redact
        from hydralign.tracking.store import retry_locked, tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri(config.logger.tracking_uri))
        tags = {"mlflow.runName": f"evaluate {os.environ.get(SWEEP_ID_ENV, '')}", ENTRY_TAG: "evaluate",
                "command_line": redact(" ".join([ENTRY] + [a for a in sys.argv[1:] if a not in CALLBACKS]))}
        for key, value in tags.items():
            retry_locked(client.set_tag, parent, key, value)
