"""The sweep: search space from Hydra's override grammar, a batched ask -> launch -> tell loop on an
Optuna study that persists in a journal file, and the results written to the sweep folder.

Imported only when a sweep starts (Hydra imports every plugin module at start-up)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hydralign.optuna_study import make_pruner, make_sampler, make_storage, write_study_file

log = logging.getLogger(__name__)
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def distribution(override: Override) -> BaseDistribution | str:
    """One override -> an Optuna distribution, or its value as a string when it is not a sweep.

    choice(a, b)            -> CategoricalDistribution
    range(1, 9, 2)          -> IntDistribution(1, 7, step=2)  (float bounds/step: FloatDistribution)
    interval(0.1, 1)        -> FloatDistribution(0.1, 1.0)
    int(interval(1, 8))     -> IntDistribution(1, 8)
    tag(log, interval(..))  -> the same with log=True
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        points = list(override.sweep_iterator())
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(points[0]), float(points[-1]), step=float(value.step))
        return IntDistribution(int(points[0]), int(points[-1]), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: this sweep type is not supported by the Optuna sweeper")


def grid_of(distributions: dict[str, BaseDistribution]) -> Optional[dict[str, list]]:
    grid: dict[str, list] = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            return None
    return grid


def encode(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class OptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: str, sampler_seed: Optional[int], sampler_kwargs: Any, pruner: str,
                 pruner_kwargs: Any, direction: str, study_name: Optional[str], storage: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Any) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction} must be maximize or minimize")
        self.sampler_name, self.sampler_seed = sampler, sampler_seed
        self.sampler_kwargs = OmegaConf.to_container(sampler_kwargs) if isinstance(sampler_kwargs, DictConfig) \
            else dict(sampler_kwargs or {})
        self.pruner_name = pruner
        self.pruner_kwargs = OmegaConf.to_container(pruner_kwargs) if isinstance(pruner_kwargs, DictConfig) \
            else dict(pruner_kwargs or {})
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, max(1, n_jobs), max_failure_rate
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()

    def _space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
        parser = OverridesParser.create()
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        overrides += parser.parse_overrides(arguments)  # the command line wins over sweeps/*.yaml
        space: dict[str, Any] = {}
        for ov in overrides:
            space[ov.get_key_element()] = distribution(ov)
        dists = {k: v for k, v in space.items() if isinstance(v, BaseDistribution)}
        fixed = [f"{k}={v}" for k, v in space.items() if not isinstance(v, BaseDistribution)]
        if not dists:
            raise ValueError("the Optuna sweeper found nothing to search: give hydra.sweeper.params or a sweep "
                             "on the command line, e.g. 'lr=tag(log, interval(1e-4, 1e-2))'")
        return dists, fixed

    def sweep(self, arguments: list[str]) -> None:
        dists, fixed = self._space(arguments)
        name = self.study_name or "hydralign-" + hashlib.sha1(
            repr((sorted((k, repr(v)) for k, v in dists.items()), sorted(fixed))).encode()).hexdigest()[:10]
        storage_url = self.storage or str(Path("outputs") / "optuna" / f"{name}.journal")
        if "://" not in storage_url:
            storage_url = str(Path(storage_url).resolve())
        study = optuna.create_study(
            study_name=name, storage=make_storage(storage_url), direction=self.direction, load_if_exists=True,
            sampler=make_sampler(self.sampler_name, self.sampler_seed, self.sampler_kwargs, grid_of(dists)),
            pruner=make_pruner(self.pruner_name, self.pruner_kwargs))
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                              optuna.trial.TrialState.WAITING)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # left by an interrupted sweep
        study_file = self.sweep_dir / "study.json"
        write_study_file(study_file, {"study_name": name, "storage": storage_url, "pruner": self.pruner_name,
                                      "pruner_kwargs": self.pruner_kwargs, "direction": self.direction})
        done = len(study.get_trials(deepcopy=False, states=DONE))
        log.info("Optuna study %s in %s: %d of %d trials done, search space %s", name, storage_url, done,
                 self.n_trials, {k: str(v) for k, v in dists.items()})
        failures = sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.FAIL)
        while done < self.n_trials:
            trials = [study.ask(dists) for _ in range(min(self.n_jobs, self.n_trials - done))]
            overrides = [
                tuple(f"{k}={encode(v)}" for k, v in t.params.items()) + tuple(fixed)
                + (f"sweep.study_file='{study_file}'", f"sweep.trial_id={t._trial_id}",
                   f"sweep.trial_number={t.number}")
                for t in trials
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                state, value = self._outcome(trial, ret)
                study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
                failures += state == optuna.trial.TrialState.FAIL
            done += len(trials)
            if failures / done > self.max_failure_rate:
                self._write_results(study, name, storage_url)
                raise RuntimeError(f"{failures} of {done} trials failed, above hydra.sweeper.max_failure_rate="
                                   f"{self.max_failure_rate}; see the failed jobs' logs in {self.sweep_dir}")
        self._write_results(study, name, storage_url)

    @staticmethod
    def _outcome(trial, ret) -> tuple[optuna.trial.TrialState, Optional[float]]:
        if ret.status == JobStatus.FAILED:
            err = ret._return_value
            if isinstance(err, optuna.TrialPruned):
                log.info("trial %d pruned: %s", trial.number, err)
                return optuna.trial.TrialState.PRUNED, None
            log.warning("trial %d failed: %r", trial.number, err)
            return optuna.trial.TrialState.FAIL, None
        value = ret.return_value
        if value is None or not isinstance(value, (int, float)) or value != value:
            log.warning("trial %d returned %r, not a number: recorded as failed", trial.number, value)
            return optuna.trial.TrialState.FAIL, None
        return optuna.trial.TrialState.COMPLETE, float(value)

    def _write_results(self, study, name: str, storage_url: str) -> None:
        states = {s.name: 0 for s in optuna.trial.TrialState}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] += 1
        results: dict[str, Any] = {"name": "optuna", "study_name": name, "storage": storage_url,
                                   "direction": self.direction, "n_trials": len(study.trials),
                                   "states": {k: v for k, v in states.items() if v}}
        if states["COMPLETE"]:
            results.update(best_params=dict(study.best_params), best_value=float(study.best_value),
                           best_trial=study.best_trial.number)
        out = self.sweep_dir / "optimization_results.yaml"
        OmegaConf.save(OmegaConf.create(results), out)
        log.info("results written to %s: %s", out, results.get("best_params"))
