"""ORPO, odds ratio preference optimization (``method=orpo``; Hong et al. 2024, https://arxiv.org/abs/2403.07691):
reference-free, one stage: the NLL of the chosen answer plus beta x the odds-ratio loss (module
hydralign/methods/orpo.py, loss hydralign/losses/orpo.py). Names as TRL's ORPOConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydralign.config.read import setting
from hydralign.config.schema import MethodConfig
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec


@dataclass
class ORPOConfig(MethodConfig):
    """ORPO on preference pairs, per pair: -avg log p(chosen) - beta x log sigmoid(log odds(chosen) - log odds(
    rejected)), on length-averaged log-probs (the paper's eq. 6-7; TRL's ORPOTrainer)."""

    beta: float = 0.1  # the paper's lambda: weight of the odds-ratio term against the chosen answer's NLL


def _check(cfg: Any) -> None:
    beta = float(setting(cfg, "method.beta", ORPOConfig))
    if not beta > 0:
        raise ConfigError(f"method.beta={beta} must be > 0 (the paper's lambda; 0.1 in the paper and TRL), or use "
                          "method=sft for the NLL alone")


SPEC = MethodSpec("orpo", ORPOConfig, data_kind="preference", unit="pairs", module="hydralign.methods.orpo:ORPOModule",
                  order=4, sequences_per_example=2, check=_check, packing=True, chunked_loss=True,
                  report_metrics=("val/rewards/accuracies", "val/rewards/margins", "val/loss"))
