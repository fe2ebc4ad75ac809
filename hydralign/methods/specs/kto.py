"""KTO, Kahneman-Tversky optimization (``method=kto``; Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306):
unpaired feedback (a completion labelled desirable or not) against a reference, with a KL estimate as the reference
point (module hydralign/methods/kto.py, loss hydralign/losses/kto.py, data hydralign/data/kinds/unpaired.py).
Names as TRL's KTOConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.config.schema import MethodConfig
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec
from hydralign.methods.specs.dpo import REFERENCE_ZERO3_FIX, reference_described, reference_held


@dataclass
class KTOConfig(MethodConfig):
    """KTO on unpaired feedback: per example, w x (1 - sigmoid(beta x (r - KL))) for a desirable completion and
    w x (1 - sigmoid(beta x (KL - r))) for an undesirable one, r = log pi(y|x) - log ref(y|x) (summed)."""

    beta: float = 0.1  # how far from the reference a reward saturates (TRL's default)
    desirable_weight: float = 1.0  # lambda_D: with imbalanced data, keep lambda_D n_D / (lambda_U n_U) in [1, 4/3]
    undesirable_weight: float = 1.0  # lambda_U
    precompute_ref: bool = False  # reference log-probs (completions and KL twins) computed once and cached on disk
    ref_cache_dir: Optional[str] = None  # null: <cwd>/outputs/cache/reference_logps


def _m(cfg: Any, key: str) -> Any:
    return setting(cfg, f"method.{key}", KTOConfig)


def _check(cfg: Any) -> None:
    beta = float(_m(cfg, "beta"))
    if not beta > 0:
        raise ConfigError(f"method.beta={beta} must be > 0 (TRL's default: 0.1)")
    for key in ("desirable_weight", "undesirable_weight"):
        if not float(_m(cfg, key)) > 0:
            raise ConfigError(f"method.{key}={_m(cfg, key)} must be > 0 (1.0 for balanced data)")


SPEC = MethodSpec("kto", KTOConfig, data_kind="unpaired", unit="completions", module="hydralign.methods.kto:KTOModule",
                  order=5, sequences_per_example=2, examples_per_record=2, frozen=reference_described, held=reference_held, check=_check,
                  starts_from_trained=True, zero3_fix=REFERENCE_ZERO3_FIX,
                  report_metrics=("val/rewards/margins", "val/kl", "val/loss"))
