"""The MLflow store and run identity (a leaf): the tracking URI (explicit, never read at import), the experiment and
its artifact location, retries on a locked SQLite store, the config's flat params and hash, the git commit, the
Hydra job of this process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

DEFAULT_STORE = Path("outputs") / "mlflow.db"


JOB_ENV = "HYDRALIGN_JOB"  # {"num", "overrides"} of the Hydra job, for ranks started by hydralign.distributed.launch


SWEEP_FILE_ENV = "HYDRALIGN_SWEEP_FILE"  # the sweep folder's sweep.json (fixed keys, for run names)


def tracking_uri(configured: Optional[str]) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the SQLite store outputs/mlflow.db (absolute).
    SQLite URIs get ``timeout=60``: sqlite3 then waits for a lock held by a parallel job."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        path = (Path.cwd() / DEFAULT_STORE).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    if uri.startswith("sqlite:///") and "timeout=" not in uri:
        uri += ("&" if "?" in uri else "?") + "timeout=60"
    return uri


def artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts of a SQLite store live beside it (``<store dir>/mlartifacts/<experiment>``); MLflow
    would otherwise put them in ./mlruns of whatever directory the run started in."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):].split("?")[0])
        return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
    return None


def ensure_experiment(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created (artifacts beside the store) if it does not exist yet; done here so
    Lightning never warns "Experiment ... not found. Creating it"."""
    exp = retry_locked(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry_locked(client.create_experiment, name, artifact_location=artifact_location(uri, name))
    except Exception:  # a parallel job created it first
        exp = retry_locked(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else str(node)
    return out


def config_hash(resolved_yaml: str) -> str:
    return hashlib.sha256(resolved_yaml.encode()).hexdigest()[:12]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def retry_locked(fn, *args, attempts: int = 20, **kwargs):
    """SQLite allows one writer: retry an MLflow call while the database is locked."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(err) or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))


def hydra_job() -> Optional[tuple[int, list[str]]]:
    """(job number, the job's overrides) of a multirun's job; None in a single run. A rank started by
    ``hydralign.distributed.launch`` reads them from ``$HYDRALIGN_JOB`` (it runs outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:
        raw = os.environ.get(JOB_ENV)
        if not raw:
            return None
        job = json.loads(raw)
        return int(job["num"]), list(job["overrides"])
    num = hc.job.get("num", None)
    return None if num is None else (int(num), list(hc.overrides.task))


def short_override(override: str) -> str:
    """``lr=0.0012345678`` -> ``lr=0.001235``: sampled floats, shortened for a run name."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if any(c in value for c in ".eE") else override
