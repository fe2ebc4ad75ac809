"""Optuna pieces shared by the sweeper (parent process) and the jobs (pruning): storage, sampler,
pruner and the study file that tells a job which study and trial it belongs to.

Optuna is imported lazily: this module loads with the plugin at Hydra start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "successive_halving", "hyperband", "threshold")


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


def make_sampler(name: str, seed: Optional[int], kwargs: Optional[dict], grid: Optional[dict] = None):
    import optuna

    kwargs = dict(kwargs or {})
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **kwargs)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)
    if name == "grid":
        if grid is None:
            raise ValueError("sampler=grid needs every swept parameter to be a choice or a range")
        return optuna.samplers.GridSampler(grid, seed=seed, **kwargs)
    raise ValueError(f"hydra.sweeper.sampler={name} is unknown; choose one of: {', '.join(SAMPLERS)}")


def write_study_file(path: Path, spec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2, sort_keys=True))


def load_trial(study_file: str, trial_id: int):
    """Rebuild the job's trial from storage (the pruner is not stored: it comes from the file)."""
    import optuna

    spec = json.loads(Path(study_file).read_text())
    study = optuna.load_study(study_name=spec["study_name"], storage=make_storage(spec["storage"]),
                              pruner=make_pruner(spec["pruner"], spec.get("pruner_kwargs")))
    return optuna.trial.Trial(study, trial_id), spec
