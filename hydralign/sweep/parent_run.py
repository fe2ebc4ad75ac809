"""One MLflow parent run per multirun (any sweeper); every job becomes its child.

A Hydra callback: ``on_multirun_start`` creates the store, the experiment and the parent run before
any job starts (no schema-migration race between parallel jobs), and hands the parent's id to the
jobs through ``HYDRALIGN_PARENT_RUN_ID`` (never ``MLFLOW_RUN_ID``: that would make every job write
into the parent, mlflow #15713). ``on_multirun_end`` logs the sweep's results and closes the parent.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hydralign.secrets import redact
from hydralign.tracking.recorder import PARENT_ENV, SWEEP_ID_ENV
from hydralign.tracking.store import SWEEP_FILE_ENV

SWEEP_FILE = "sweep.json"  # in the sweep folder: store URI, experiment, parent run id, fixed keys


def _tracked(config: DictConfig) -> bool:
    return not config.get("dry_run", False) and config.logger.name == "mlflow"


def _close_if_open(uri: str, parent_id: str) -> None:
    if os.environ.get(PARENT_ENV) != parent_id:
        return  # on_multirun_end closed it
    from mlflow.tracking import MlflowClient

    from hydralign.tracking.store import retry_locked

    retry_locked(MlflowClient(tracking_uri=uri).set_terminated, parent_id, "FAILED")


class SweepTracking(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _tracked(config):
            return
        from mlflow.tracking import MlflowClient

        from hydralign.run.console import quiet_mlflow
        from hydralign.tracking.store import ensure_experiment, retry_locked, tracking_uri

        quiet_mlflow()
        uri = tracking_uri(config.logger.tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        exp_id = ensure_experiment(client, uri, config.logger.experiment_name)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_id = f"{sweep_dir.parent.name}_{sweep_dir.name}_{uuid.uuid4().hex[:6]}"
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default="?")
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        space = OmegaConf.to_container(params) if params is not None else {}
        swept = list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
        parent = retry_locked(client.create_run, exp_id, run_name=f"sweep {sweep_id}", tags={
            "sweep_id": sweep_id, "sweeper": sweeper.rsplit(".", 1)[-1], "sweep_dir": str(sweep_dir),
            "search_space": redact(json.dumps({**space, "command_line_overrides": swept})),
            "command_line": redact(" ".join(["python -m hydralign"] + sys.argv[1:])), "is_sweep_parent": "true"})
        os.environ[PARENT_ENV], os.environ[SWEEP_ID_ENV] = parent.info.run_id, sweep_id
        os.environ[SWEEP_FILE_ENV] = str(sweep_dir / SWEEP_FILE)
        # Hydra skips on_multirun_end when the sweep raises (a failed job, too many failed trials):
        # the parent run is then closed as FAILED at exit instead of staying RUNNING forever.
        atexit.register(_close_if_open, uri, parent.info.run_id)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        from hydralign.sweep.cells import fixed_keys
        from hydralign.sweep.grid_check import repeated_names

        (sweep_dir / SWEEP_FILE).write_text(json.dumps(  # fixed keys, repeated cells: for the jobs' run names
            {"tracking_uri": redact(uri), "experiment_id": exp_id, "parent_run_id": parent.info.run_id,
             "sweep_id": sweep_id, "fixed_keys": fixed_keys(config), "repeated_cells": repeated_names(config)},
            indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent_id = os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEEP_ID_ENV, None)
        os.environ.pop(SWEEP_FILE_ENV, None)
        if not parent_id or not _tracked(config):
            return
        from mlflow.tracking import MlflowClient

        from hydralign.tracking.store import retry_locked, tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri(config.logger.tracking_uri))
        results = Path(config.hydra.sweep.dir).resolve() / "optimization_results.yaml"
        if results.is_file():
            retry_locked(client.log_artifact, parent_id, str(results))
            best = OmegaConf.load(results)
            if "best_value" in best:
                retry_locked(client.log_metric, parent_id, "best_value", float(best.best_value))
                for k, v in best.best_params.items():
                    retry_locked(client.set_tag, parent_id, f"best.{k}", str(v))
            if "solutions" in best:  # a multi-objective study: the Pareto front
                front = OmegaConf.to_container(best.solutions)
                retry_locked(client.set_tag, parent_id, "pareto_front", json.dumps(front)[:5000])
                retry_locked(client.log_metric, parent_id, "pareto_size", float(len(front)))
        retry_locked(client.set_terminated, parent_id, "FINISHED")


PARENT_ATTR = "hydralign:mlflow_parent_run_id"  # a study user attribute: the study's MLflow parent run


def share_parent(study: Any, created: bool, config: DictConfig, wait_s: float = 60.0) -> None:
    """One MLflow parent run per Optuna study, however many sweepers run it (the same command on several nodes).
    Each sweeper's ``on_multirun_start`` made a parent of its own; the sweeper that created the study (the storage
    makes that atomic: a study name is unique) records its parent in the study, and every other sweeper waits for
    that record, deletes its own (still childless) parent and sends its jobs to the study's. A sweeper that later
    continues the study does the same. The parent's status follows the last sweeper to end."""
    import time

    own = os.environ.get(PARENT_ENV)
    if not own or not _tracked(config):
        return
    shared = None if created else study.user_attrs.get(PARENT_ATTR)
    deadline = time.time() + wait_s
    while shared is None and not created and time.time() < deadline:  # its creator records it right after
        time.sleep(0.5)
        shared = study.user_attrs.get(PARENT_ATTR)
    if shared is None or shared == own:
        study.set_user_attr(PARENT_ATTR, own)  # a study made before this record existed: this parent is its own
        return
    from mlflow.tracking import MlflowClient

    from hydralign.tracking.store import retry_locked, tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri(config.logger.tracking_uri))
    parent = retry_locked(client.get_run, shared)
    retry_locked(client.delete_run, own)
    os.environ[PARENT_ENV] = shared
    os.environ[SWEEP_ID_ENV] = parent.data.tags.get("sweep_id", os.environ.get(SWEEP_ID_ENV, ""))
    retry_locked(client.update_run, shared, "RUNNING")  # a later sweeper continuing a finished study
    sweep_file = Path(config.hydra.sweep.dir).resolve() / SWEEP_FILE
    if sweep_file.is_file():
        record = json.loads(sweep_file.read_text())
        record.update(parent_run_id=shared, sweep_id=os.environ[SWEEP_ID_ENV])
        sweep_file.write_text(json.dumps(record, indent=2))
    print(f"hydralign: study {study.study_name} already has its MLflow parent run {shared}: this sweeper's "
          "trials are its children too", flush=True)
