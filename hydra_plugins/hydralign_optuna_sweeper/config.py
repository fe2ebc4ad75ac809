"""Sweeper config, registered in Hydra's ConfigStore as ``hydra/sweeper=optuna``."""

# No `from __future__ import annotations` here: Hydra execs plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.hydralign_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: str = "tpe"  # tpe | random | grid | cmaes
    sampler_seed: Optional[int] = None
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 3}
    pruner: str = "median"  # none | median | successive_halving | hyperband | threshold
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 2}
    direction: str = "maximize"  # maximize | minimize (match optimized_metric)
    study_name: Optional[str] = None  # null: derived from the search space, so re-runs continue it
    storage: Optional[str] = None  # null: outputs/optuna/<study_name>.journal; or any Optuna URL
    n_trials: int = 20  # total over every run of the same study
    n_jobs: int = 1  # trials launched together (set hydra/launcher=joblib to run them in parallel)
    max_failure_rate: float = 0.3  # stop launching once failed / finished trials exceeds this
    params: dict[str, str] = field(default_factory=dict)  # search space in Hydra's override grammar


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="hydralign_optuna_sweeper")
