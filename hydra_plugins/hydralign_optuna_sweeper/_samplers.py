"""``hydra.sweeper.sampler`` (a node of the ``hydra/sweeper/sampler`` group, or a plain name) -> an
Optuna sampler. Imported only when a sweep starts."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Optional

import optuna
from hydra.errors import CompactHydraException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydralign_optuna_sweeper.config import OBJECT_ARGS, REMOVED_SAMPLERS, SAMPLERS


class SamplerError(CompactHydraException, ValueError):
    """The sampler config names something that does not exist; the message says what does."""


def sampler_spec(sampler: Any, seed_alias: Optional[int] = None,
                 kwargs_alias: Optional[dict] = None) -> tuple[str, dict[str, Any]]:
    """(the sampler's ``_target_``, its constructor arguments) from the config node or a plain name,
    with the flat aliases ``sampler_seed`` / ``sampler_kwargs`` applied on top."""
    if sampler is None:
        sampler = "tpe"
    if isinstance(sampler, str):
        name = sampler.strip().lower()
        if name in REMOVED_SAMPLERS:
            raise SamplerError(REMOVED_SAMPLERS[name])
        if name not in SAMPLERS:
            raise SamplerError(f"hydra.sweeper.sampler={sampler} is unknown; choose one of: "
                               f"{', '.join(SAMPLERS)} (hydra/sweeper/sampler=<name>)")
        node = SAMPLERS[name]()
        spec = {f.name: getattr(node, f.name) for f in fields(node)}
    else:
        spec = OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig) else dict(sampler)
    target = str(spec.pop("_target_", ""))
    if target.startswith("removed:"):
        raise SamplerError(REMOVED_SAMPLERS[target.split(":", 1)[1]])
    if seed_alias is not None:
        spec["seed"] = seed_alias
    unknown = set(kwargs_alias or {}) - set(spec) if target.startswith("optuna.samplers.") else set()
    if unknown:
        raise SamplerError(f"hydra.sweeper.sampler_kwargs has {sorted(unknown)}, which {target} does not take; "
                           f"it takes: {', '.join(sorted(spec))}")
    spec.update(kwargs_alias or {})
    return target, spec


def _resolve_object(name: str, value: Any) -> Any:
    if isinstance(value, dict) and "_target_" in value:
        return instantiate(value)
    if isinstance(value, str):
        found = get_object(value)
        if isinstance(found, type) and name in ("independent_sampler", "mutation", "crossover"):
            return found()
        return found
    return value


def build_sampler(target: str, kwargs: dict[str, Any], grid: Optional[dict[str, list]]):
    """Instantiate the sampler. ``grid`` is the search space as lists of points (GridSampler only)."""
    try:
        cls = get_class(target)
    except Exception as err:  # ImportError, ValueError: Hydra words it
        raise SamplerError(f"hydra.sweeper.sampler._target_={target} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise SamplerError(f"hydra.sweeper.sampler._target_={target} is not an Optuna sampler")
    kwargs = {k: (_resolve_object(k, v) if k in OBJECT_ARGS else v) for k, v in kwargs.items()}
    if issubclass(cls, optuna.samplers.GridSampler):
        if grid is None:
            raise SamplerError("hydra/sweeper/sampler=grid needs every searched parameter to be discrete: "
                               "choice(...), range(...) or a comma list (interval(...) has no grid points)")
        return cls(grid, **kwargs)
    return cls(**kwargs)
