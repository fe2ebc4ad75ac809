"""The Sweeper Hydra instantiates; the work is in ``_impl`` (imported when a sweep starts)."""

from __future__ import annotations

from typing import Any, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.hydralign_optuna_sweeper import config as _registers_optuna_sweeper  # noqa: F401


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any = None, direction: Any = "minimize", storage: Optional[Any] = None,
                 study_name: Optional[str] = None, n_trials: int = 20, n_jobs: int = 2,
                 max_failure_rate: float = 0.0, params: Optional[Any] = None,
                 custom_search_space: Optional[str] = None, pruner: str = "none", pruner_kwargs: Any = None,
                 sampler_seed: Optional[int] = None, sampler_kwargs: Any = None, heartbeat_interval: int = 30,
                 grace_period: int = 120, retry_failed_trials: int = 0) -> None:
        from hydra_plugins.hydralign_optuna_sweeper._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler=sampler, direction=direction, storage=storage, study_name=study_name, n_trials=n_trials,
            n_jobs=n_jobs, max_failure_rate=max_failure_rate, params=params,
            custom_search_space=custom_search_space, pruner=pruner, pruner_kwargs=pruner_kwargs,
            sampler_seed=sampler_seed, sampler_kwargs=sampler_kwargs, heartbeat_interval=heartbeat_interval,
            grace_period=grace_period, retry_failed_trials=retry_failed_trials)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Optional[Any]:
        return self.sweeper.sweep(arguments)
