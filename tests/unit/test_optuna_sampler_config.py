"""``hydra/sweeper/sampler=<name>``: every node holds every constructor argument of its Optuna sampler
with Optuna's own default (checked against the installed Optuna, so an upgrade that adds or changes an
argument fails here), and the node (or a plain name, or the old flat aliases) builds that sampler."""

from __future__ import annotations

import dataclasses
import inspect

import optuna
import pytest
from omegaconf import OmegaConf

from hydra_plugins.hydralign_optuna_sweeper._samplers import SamplerError, build_sampler, sampler_spec
from hydra_plugins.hydralign_optuna_sweeper.config import OBJECT_ARGS, SAMPLERS


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_node_mirrors_the_constructor(name):
    node = SAMPLERS[name]
    cls = getattr(optuna.samplers, node._target_.rsplit(".", 1)[-1])
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k not in ("self", "search_space")}  # the grid's search space comes from the sweep
    fields = {f.name: f.default for f in dataclasses.fields(node) if f.name != "_target_"}
    assert set(fields) == set(params), f"{name}: add or drop {set(params) ^ set(fields)}"
    for arg, param in params.items():
        assert fields[arg] == param.default, f"{name}.{arg}: Optuna's default is {param.default!r}"
        if arg in OBJECT_ARGS:
            assert param.default is None


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_node_builds_its_sampler(name):
    target, kwargs = sampler_spec(OmegaConf.structured(SAMPLERS[name]), seed_alias=3)
    sampler = build_sampler(target, kwargs, grid={"x": [1, 2]})
    assert type(sampler).__name__ == target.rsplit(".", 1)[-1]


def test_plain_name_and_flat_aliases():
    target, kwargs = sampler_spec("random", seed_alias=5)
    assert (target, kwargs) == ("optuna.samplers.RandomSampler", {"seed": 5})
    target, kwargs = sampler_spec(OmegaConf.structured(SAMPLERS["tpe"]), None, {"n_startup_trials": 2})
    assert kwargs["n_startup_trials"] == 2 and kwargs["seed"] is None
    with pytest.raises(SamplerError, match="does not take; it takes: .*n_ei_candidates"):
        sampler_spec("tpe", None, {"n_startup": 2})
    with pytest.raises(SamplerError, match="sampler=bogus is unknown; choose one of: tpe, random, grid"):
        sampler_spec("bogus")


def test_removed_sampler_says_what_replaced_it():
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("hydra/sweeper/sampler/motpe.yaml").node
    with pytest.raises(SamplerError, match="'motpe' sampler was removed in Optuna 4.0: use hydra/sweeper/sampler=tpe"):
        sampler_spec(node)
    with pytest.raises(SamplerError, match="removed in Optuna 4.0"):
        sampler_spec("motpe")


def test_object_arguments_from_dotpaths_and_targets():
    target, kwargs = sampler_spec("tpe", None, {"gamma": "optuna.samplers._tpe.sampler.default_gamma"})
    sampler = build_sampler(target, kwargs, None)
    assert sampler._gamma is optuna.samplers._tpe.sampler.default_gamma
    target, kwargs = sampler_spec("cmaes", 0, {"independent_sampler": {"_target_": "optuna.samplers.RandomSampler"}})
    assert isinstance(build_sampler(target, kwargs, None)._independent_sampler, optuna.samplers.RandomSampler)


def test_grid_needs_a_discrete_space_and_targets_must_be_samplers():
    target, kwargs = sampler_spec("grid")
    with pytest.raises(SamplerError, match="needs every searched parameter to be discrete"):
        build_sampler(target, kwargs, None)
    with pytest.raises(SamplerError, match="is not an Optuna sampler"):
        build_sampler("optuna.pruners.MedianPruner", {}, None)
