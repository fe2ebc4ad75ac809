"""The sweep: search space from Hydra's override grammar, a batched ask -> launch -> tell loop on an
Optuna study that persists (by default in a journal file), and the results written to the sweep folder.

Imported only when a sweep starts (Hydra imports every plugin module at start-up)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import optuna
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from hydra_plugins.hydralign_optuna_sweeper._heartbeat import Heartbeat, counted, fail_stale
from hydra_plugins.hydralign_optuna_sweeper._outcome import TrialsFailed, failure_report, outcome
from hydra_plugins.hydralign_optuna_sweeper._samplers import build_sampler, sampler_spec
from hydra_plugins.hydralign_optuna_sweeper._space import SearchSpace, override_value
from hydralign.secrets import STORAGE_ENV, has_password, redact
from hydralign.sweep.parent_run import share_parent
from hydralign.sweep.study import DEFAULT_STORAGE_DIR, STUDY_FILE, make_pruner, make_storage, write_study_file

log = logging.getLogger(__name__)
State = optuna.trial.TrialState
DIRECTIONS = ("minimize", "maximize")


def directions_of(direction: Any) -> list[str]:
    """``minimize``, ``maximize`` or a list of them (the official plugin's Direction enum names too)."""
    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(getattr(d, "name", d)).strip().lower() for d in items]
    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"hydra.sweeper.direction={direction} must be minimize, maximize or a list of them "
                         "(e.g. [minimize, maximize] for two objectives)")
    return names


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


class OptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Optional[Any], study_name: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Optional[Any],
                 custom_search_space: Optional[str], pruner: str, pruner_kwargs: Any,
                 sampler_seed: Optional[int], sampler_kwargs: Any, heartbeat_interval: int = 30,
                 grace_period: int = 120, retry_failed_trials: int = 0) -> None:
        self.directions = directions_of(direction)
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be in [0, 1]")
        if n_trials < 0:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} must be >= 0")
        self.sampler_target, self.sampler_kwargs = sampler_spec(sampler, sampler_seed, _container(sampler_kwargs))
        self.storage = None if storage is None else str(storage)
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, max(1, n_jobs)
        self.max_failure_rate = max_failure_rate
        self.params = {str(k): str(v) for k, v in (_container(params) or {}).items()}
        self.custom_search_space = custom_search_space
        self.extend: Optional[Callable[[DictConfig, optuna.trial.Trial], None]] = (
            get_method(custom_search_space) if custom_search_space else None)
        self.pruner_name, self.pruner_kwargs = pruner, dict(_container(pruner_kwargs) or {})
        make_pruner(self.pruner_name, self.pruner_kwargs)  # an unknown pruner fails before any job
        if not 0 < heartbeat_interval < grace_period:
            raise ValueError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval} must be > 0 and below "
                             f"hydra.sweeper.grace_period={grace_period} (a live sweeper beats several times per grace)")
        if retry_failed_trials < 0:
            raise ValueError(f"hydra.sweeper.retry_failed_trials={retry_failed_trials} must be >= 0")
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.retry_failed_trials = retry_failed_trials
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.job_idx = 0
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()

    # --- the study ---------------------------------------------------------------------------
    def _study(self, space: SearchSpace, sampler) -> tuple[optuna.Study, str, str]:
        name = self.study_name or space.study_name(self.directions, self.custom_search_space or "")
        storage_url = self.storage or str(DEFAULT_STORAGE_DIR / f"{name}.journal")
        if "://" not in storage_url:
            storage_url = str(Path(storage_url).expanduser().resolve())
        storage, pruner = make_storage(storage_url), make_pruner(self.pruner_name, self.pruner_kwargs)
        try:  # the storage's unique study name tells, atomically, which sweeper made the study
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                        directions=self.directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            created = False
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ValueError(f"study {name} in {redact(storage_url)} optimizes {found}, not hydra.sweeper.direction="
                             f"{self.directions}: give another hydra.sweeper.study_name for a new study")
        # Other sweepers may be running trials of this study: only those whose sweeper stopped beating are failed.
        fail_stale(study, self.grace_period, self.retry_failed_trials)
        share_parent(study, created, self.config)  # one MLflow parent run per study, whichever sweepers run it
        return study, name, storage_url

    def _trial_overrides(self, trial: optuna.trial.Trial, space: SearchSpace) -> list[str]:
        for key, value in space.fixed.items():
            trial.set_user_attr(key, value)
        if self.extend is not None:
            self.extend(self.config, trial)
        overlap = sorted(set(trial.params) & set(space.fixed))
        if overlap:
            raise ValueError(f"custom_search_space suggested {overlap}, which are fixed by an override; drop "
                             "the override or the suggestion")
        return ([f"{k}={override_value(v)}" for k, v in trial.params.items()]
                + [f"{k}={v}" for k, v in space.fixed.items()] + space.passthrough)

    def sweep(self, arguments: list[str]) -> None:
        space = SearchSpace.parse([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        grid = space.grid()
        sampler = build_sampler(self.sampler_target, self.sampler_kwargs, grid)
        study, name, storage_url = self._study(space, sampler)
        self.storage_url = storage_url
        if has_password(storage_url):  # the jobs' way to the study: files hold it masked (hydralign.secrets)
            os.environ[STORAGE_ENV] = storage_url
        total = self.n_trials
        if isinstance(sampler, optuna.samplers.GridSampler):
            size = 1
            for points in (grid or {}).values():
                size *= len(points)
            if size < total:
                log.info("grid sampler: the grid has %d point(s), so the study stops there (n_trials=%d)",
                         size, total)
            total = min(total, size)
        self.study_spec = {"study_name": name, "storage": storage_url, "pruner": self.pruner_name,
                           "pruner_kwargs": self.pruner_kwargs, "directions": self.directions, "jobs": {}}
        done = counted(study)
        log.info("Optuna study %s (%s, %s): %d of %d trials done; search space %s%s", name,
                 type(sampler).__name__, "/".join(self.directions), done, total,
                 {k: str(v) for k, v in space.distributions.items()} or "(none: the fixed parameters only)",
                 f" + {self.custom_search_space}" if self.extend else "")
        if self.storage is None:
            log.info("storage=null: the study is kept in %s (Hydra's official plugin keeps it in memory); "
                     "running this command again continues it up to n_trials=%d in total", storage_url, total)
        if done >= total:
            log.warning("nothing to run: study %s already has %d finished trials (n_trials=%d). Raise "
                        "hydra.sweeper.n_trials to continue it, or start a fresh study with "
                        "hydra.sweeper.study_name=<new name>%s", name, done, total,
                        f" (or delete {storage_url})" if self.storage is None else "")
        while done < total:  # the study's total, whoever runs its trials (several sweepers may share it)
            self._run_batch(study, space, min(self.n_jobs, total - done))
            fail_stale(study, self.grace_period, self.retry_failed_trials)
            done = counted(study)
        self._write_results(study, name, storage_url)

    def _run_batch(self, study: optuna.Study, space: SearchSpace, size: int) -> int:
        trials = [study.ask(fixed_distributions=space.distributions) for _ in range(size)]
        overrides = [self._trial_overrides(t, space) for t in trials]
        for i, (trial, job_overrides) in enumerate(zip(trials, overrides)):  # how a job finds its trial
            self.study_spec["jobs"][str(self.job_idx + i)] = {
                "trial_id": trial._trial_id, "number": trial.number, "overrides": job_overrides}
        write_study_file(self.sweep_dir / STUDY_FILE, self.study_spec)
        with Heartbeat(study, trials, self.heartbeat_interval):  # other sweepers see these trials alive
            returns = self.launcher.launch([tuple(o) for o in overrides], initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        failed = []
        for trial, job_overrides, ret in zip(trials, overrides, returns):
            out = outcome(ret, len(self.directions))
            if out.state == State.FAIL:
                log.warning("trial %d failed: %s", trial.number, out.reason)
                out_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
                failed.append((trial.number, job_overrides, out, out_dir))
            elif out.state == State.PRUNED:
                log.info("trial %d pruned: %s", trial.number, out.reason)
            self._tell(study, trial, out.state, out.values)
        if failed and len(failed) / len(returns) > self.max_failure_rate:
            self._write_results(study, study.study_name, self.storage_url)
            raise TrialsFailed(failure_report(failed, len(returns), self.max_failure_rate))
        return len(trials)

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.trial.Trial, state: State, values: Optional[list[float]]) -> None:
        try:
            study.tell(trial, values if state == State.COMPLETE else None, state=state)
        except RuntimeError as err:
            # The grid sampler stops the study once the grid is covered, which Optuna only allows inside
            # study.optimize; the trial's state is stored before that (optuna.study._tell).
            if "Study.stop" not in str(err):
                raise

    def _write_results(self, study: optuna.Study, name: str, storage_url: str) -> None:
        trials = study.get_trials(deepcopy=False)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        results: dict[str, Any] = {"name": "optuna"}
        complete = states.get("COMPLETE", 0)
        if len(self.directions) == 1 and complete:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=float(best.value))
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s (trial %d)", best.value, best.number)
        elif complete:
            results["solutions"] = [{"params": dict(t.params), "values": [float(v) for v in t.values],
                                     "trial": t.number} for t in study.best_trials]
            log.info("Pareto front: %d trial(s)", len(results["solutions"]))
            for s in results["solutions"]:
                log.info("    values %s, params %s", s["values"], s["params"])
        else:
            log.warning("no trial completed: optimization_results.yaml has no best parameters")
        if len(self.directions) == 1 and complete:
            results["best_trial"] = study.best_trial.number
        results.update(study_name=name, storage=redact(storage_url), direction=self.directions[0] if len(
            self.directions) == 1 else list(self.directions), n_trials=len(trials), states=states)
        out = self.sweep_dir / "optimization_results.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out)
        log.info("results written to %s", out)
