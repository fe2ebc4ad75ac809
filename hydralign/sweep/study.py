"""Optuna pieces shared by the sweeper (parent process) and the jobs (pruning): storage, pruner, the
study file, and how a job learns which trial it is.

A job of an Optuna sweep finds its trial in ``<sweep dir>/study.json`` (``jobs``: Hydra's job number ->
trial id, number and overrides), which the sweeper writes before each batch: nothing is added to the
job's overrides, so any Hydra app runs unchanged. A process started by hand for one trial (torchrun
ranks) names it with environment variables instead:

    HYDRALIGN_OPTUNA_STUDY         the study file
    HYDRALIGN_OPTUNA_TRIAL_ID      the trial's id in the storage
    HYDRALIGN_OPTUNA_TRIAL_NUMBER  its number in the study (shown in run names)

Optuna is imported lazily: this module loads with the plugin at Hydra start-up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydralign.secrets import MASK, STORAGE_ENV, redact, redact_tree

PRUNERS = ("none", "median", "successive_halving", "hyperband", "threshold")
STUDY_ENV, TRIAL_ID_ENV, TRIAL_NUMBER_ENV = (
    "HYDRALIGN_OPTUNA_STUDY", "HYDRALIGN_OPTUNA_TRIAL_ID", "HYDRALIGN_OPTUNA_TRIAL_NUMBER")
DEFAULT_STORAGE_DIR = Path("outputs") / "optuna"
STUDY_FILE = "study.json"  # in the sweep folder


def make_storage(url: str):
    """An Optuna storage URL (sqlite:///..., postgresql://...) or a journal file path. The journal
    file backend is safe for several processes; SQLite is not (Optuna FAQ)."""
    import optuna

    if "://" in url:
        return url
    path = Path(url).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_pruner(name: str, kwargs: Optional[dict] = None):
    import optuna

    kwargs = dict(kwargs or {})
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    if name == "threshold":  # e.g. {lower: 0.1}: stop a trial whose metric is below 0.1
        return optuna.pruners.ThresholdPruner(**kwargs)
    raise ValueError(f"hydra.sweeper.pruner={name} is unknown; choose one of: {', '.join(PRUNERS)}")


def write_study_file(path: Path, spec: dict[str, Any]) -> None:
    """The study's announcement to its jobs, a password in the storage URL written as ``***`` (the jobs take the
    real URL from ``HYDRALIGN_OPTUNA_STORAGE``, which the sweeper sets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(redact_tree(spec), indent=2, sort_keys=True))
    tmp.replace(path)  # jobs of a parallel batch read it while the next sweep may rewrite it


@dataclass(frozen=True)
class TrialRef:
    """The Optuna trial this job runs, as the sweeper announced it."""

    study_file: str
    trial_id: int
    number: Optional[int]

    def spec(self) -> dict[str, Any]:
        return json.loads(Path(self.study_file).read_text())

    def multi_objective(self) -> bool:
        spec = self.spec()
        return len(spec.get("directions", [spec.get("direction", "minimize")])) > 1

    def load(self):
        """Rebuild the trial from storage (the pruner is not stored: it comes from the study file)."""
        import optuna

        spec = self.spec()
        study = optuna.load_study(study_name=spec["study_name"], storage=make_storage(storage_of(spec)),
                                  pruner=make_pruner(spec["pruner"], spec.get("pruner_kwargs")))
        return optuna.trial.Trial(study, self.trial_id)


def storage_of(spec: dict[str, Any], environ: Optional[dict] = None) -> str:
    """The study's storage URL: the study file's, or, where that one's password is masked, the sweeper's
    ``HYDRALIGN_OPTUNA_STORAGE`` (the same URL with its password)."""
    stored = str(spec["storage"])
    if MASK not in stored:
        return stored
    real = (os.environ if environ is None else environ).get(STORAGE_ENV)
    if not real or redact(real) != stored:
        raise RuntimeError(f"the study storage {stored} carries a password, which files never hold: this job needs "
                           f"{STORAGE_ENV} set to the full URL (the sweeper sets it for the jobs it launches; a job "
                           "started another way must be given it)")
    return real


def job_trial(environ: Optional[dict] = None) -> Optional[TrialRef]:
    """This job's trial, or None outside an Optuna sweep."""
    env = os.environ if environ is None else environ
    study, trial_id = env.get(STUDY_ENV), env.get(TRIAL_ID_ENV)
    if study and trial_id:
        number = env.get(TRIAL_NUMBER_ENV)
        return TrialRef(study, int(trial_id), int(number) if number else None)
    return _trial_of_hydra_job()


def _trial_of_hydra_job() -> Optional[TrialRef]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    if hc.mode != RunMode.MULTIRUN or hc.job.get("num", None) is None:
        return None
    sweep_dir = Path(hc.sweep.dir)
    study_file = (sweep_dir if sweep_dir.is_absolute() else Path(hc.runtime.cwd) / sweep_dir) / STUDY_FILE
    if not study_file.is_file():
        return None
    job = json.loads(study_file.read_text()).get("jobs", {}).get(str(hc.job.num))
    if not job or list(job["overrides"]) != list(hc.overrides.task):
        return None  # a study file left by another sweep in this folder
    return TrialRef(str(study_file), int(job["trial_id"]), int(job["number"]))
