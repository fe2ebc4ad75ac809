"""Sweeper config, registered in Hydra's ConfigStore as ``hydra/sweeper=optuna``, with the samplers
as the config group ``hydra/sweeper/sampler`` (tpe, random, grid, cmaes, nsgaii, qmc, gp): the same
surface as Hydra's official ``hydra-optuna-sweeper``, so a config written for it runs unchanged.

Each sampler node holds every constructor argument of the Optuna class it names, with Optuna's own
default (``tests/unit/test_optuna_sampler_config.py`` checks this against the installed Optuna).
Arguments that take an object (``independent_sampler``, ``gamma``, ``constraints_func``, ...) accept a
dotpath (``mypkg.my_gamma``) or a node with ``_target_``.

Optuna is not imported here: Hydra imports every plugin's config at start-up.
"""

# No `from __future__ import annotations` here: Hydra execs plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Constructor arguments that take an object or a function, not a plain value.
OBJECT_ARGS = ("gamma", "weights", "constraints_func", "independent_sampler", "source_trials", "mutation",
               "crossover", "elite_population_selection_strategy", "child_generation_strategy",
               "after_trial_strategy")
# Samplers Optuna removed, and what replaced them.
REMOVED_SAMPLERS = {
    "motpe": "The 'motpe' sampler was removed in Optuna 4.0: use hydra/sweeper/sampler=tpe, whose "
             "TPESampler handles multi-objective studies (or hydra/sweeper/sampler=nsgaii).",
}


@dataclass
class SamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"


@dataclass
class TPESamplerConfig(SamplerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.TPESampler.html"""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: int = 10  # random trials before TPE models the space
    n_ei_candidates: int = 24
    gamma: Optional[Any] = None
    weights: Optional[Any] = None
    multivariate: Optional[bool] = None
    group: bool = False
    warn_independent_sampling: Optional[bool] = None
    constant_liar: bool = True  # parallel trials: running ones count as bad, so a batch spreads out
    constraints_func: Optional[Any] = None


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The grid is every point of the search space (choices, ranges): n_trials is capped to its size."""

    _target_: str = "optuna.samplers.GridSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    independent_sampler: Optional[Any] = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Optional[str] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    source_trials: Optional[Any] = None


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation: Optional[Any] = None
    mutation_prob: Optional[float] = None
    crossover: Optional[Any] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Optional[Any] = None
    elite_population_selection_strategy: Optional[Any] = None
    child_generation_strategy: Optional[Any] = None
    after_trial_strategy: Optional[Any] = None


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"  # sobol | halton
    scramble: bool = False
    independent_sampler: Optional[Any] = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    independent_sampler: Optional[Any] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Optional[Any] = None
    warn_independent_sampling: bool = True


@dataclass
class RemovedSamplerConfig(SamplerConfig):
    """Selecting it stops the sweep with REMOVED_SAMPLERS' message."""

    _target_: str = "removed:motpe"


SAMPLERS: dict[str, type] = {
    "tpe": TPESamplerConfig, "random": RandomSamplerConfig, "grid": GridSamplerConfig,
    "cmaes": CmaEsSamplerConfig, "nsgaii": NSGAIISamplerConfig, "qmc": QMCSamplerConfig, "gp": GPSamplerConfig,
}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.hydralign_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (the grid needs the search space)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    # hydra/sweeper/sampler=tpe|random|grid|cmaes|nsgaii|qmc|gp; its arguments as hydra.sweeper.sampler.<arg>.
    # A plain name (hydra.sweeper.sampler=random) also works and takes that sampler's defaults.
    sampler: Any = MISSING  # MISSING, not None: the group's node merges in before this schema's values
    # minimize | maximize, or a list for a multi-objective study ([minimize, maximize]); the job then
    # returns one value per direction. As in Hydra's official plugin, the default is minimize.
    direction: Any = "minimize"
    # null: the journal file outputs/optuna/<study_name>.journal (safe for parallel processes), so that
    # running the same command again continues the study. Or any Optuna storage URL or journal path.
    storage: Optional[Any] = None
    study_name: Optional[str] = None  # null: derived from the search space and the direction(s)
    n_trials: int = 20  # the study's total: a re-run continues up to it (the grid sampler: at most the grid)
    n_jobs: int = 2  # trials asked and launched together (hydra/launcher=joblib runs them in parallel)
    max_failure_rate: float = 0.0  # stop once a batch's failed / launched trials exceeds this
    params: Optional[dict[str, str]] = None  # search space in Hydra's override grammar
    # Dotpath of a function (cfg, trial) -> None that suggests more (dependent) parameters.
    custom_search_space: Optional[str] = None
    # hydralign's additions. Pruning: jobs that report intermediate values (hydralign's do, at every
    # validation) are stopped early: none | median | successive_halving | hyperband | threshold.
    pruner: str = "none"
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 2}
    # Aliases kept from hydralign's first sweeper: hydra.sweeper.sampler.seed and .<kwarg> are the names.
    sampler_seed: Optional[int] = None
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    # Many sweepers on one study (the same command on several nodes): each beats for its running trials every
    # heartbeat_interval seconds; a RUNNING trial without a beat for grace_period seconds (its sweeper died) is
    # FAIL, and asked again with the same parameters up to retry_failed_trials times (Optuna's retry records).
    heartbeat_interval: int = 30
    grace_period: int = 120
    retry_failed_trials: int = 0


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="hydralign_optuna_sweeper")
for _name, _node in SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="hydralign_optuna_sweeper")
for _name in REMOVED_SAMPLERS:
    _store.store(group="hydra/sweeper/sampler", name=_name, node=RemovedSamplerConfig(_target_=f"removed:{_name}"),
                 provider="hydralign_optuna_sweeper")
