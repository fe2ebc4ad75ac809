"""A grid sweep's cells (a leaf): the overrides of a multirun parsed, the keys fixed for every job, each cell's
overrides and the name a run is given from them."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, OmegaConf

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


OPTUNA_SWEEPER = "hydra_plugins.hydralign_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def parsed_overrides(config: DictConfig) -> list:
    """The sweep's overrides as the sweeper reads them: ``hydra.sweeper.params``, then the command line."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    lines = [f"{k}={v}" for k, v in (OmegaConf.to_container(params) if params is not None else {}).items()]
    lines += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return OverridesParser.create(config_loader=loader).parse_overrides(lines)


def fixed_keys(config: DictConfig) -> list[str]:
    """Keys every job gets the same value for (what a run name leaves out)."""
    return sorted({ov.get_key_element() for ov in parsed_overrides(config)
                   if not ov.is_sweep_override() and not ov.is_delete()})


def grid_cells(config: DictConfig) -> Optional[list[list[str]]]:
    """Every job's overrides, in launch order, for Hydra's basic sweeper; None for other sweepers."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return [cell for batch in BasicSweeper.split_arguments(parsed_overrides(config), None) for cell in batch]


def cell_name(cell: list[str], fixed: list[str]) -> str:
    """A cell's name: its overrides of the swept keys, as typed (``batch.effective=16 seed=0``)."""
    shown = [o for o in cell if o.split("=", 1)[0] not in fixed]
    return " ".join(shown) or "(fixed overrides only)"
