"""Direct preference optimization and its family (``method=dpo``; losses in hydralign.losses.preference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.config.schema import MethodConfig
from hydralign.errors import ConfigError
from hydralign.losses.preference_types import LOSS_NEEDS_REFERENCE
from hydralign.methods.spec import MethodSpec


@dataclass
class DPOConfig(MethodConfig):
    """Direct preference optimization and its family (hydralign.losses.preference)."""

    # One loss or a list: sigmoid | ipo | hinge | robust | sigmoid_norm | simpo | sft.
    # ["sigmoid", "sft"] with loss_weights [1.0, 1.0] is RPO (DPO + NLL on the chosen answer).
    loss_type: Any = "sigmoid"
    loss_weights: Optional[list[float]] = None  # one per loss_type (null: all 1.0)
    beta: float = 0.1  # KL strength: higher keeps the policy closer to the reference
    label_smoothing: float = 0.0  # conservative DPO / robust DPO: assumed label-noise rate in [0, 0.5)
    gamma_beta_ratio: float = 0.5  # SimPO's target margin gamma / beta
    precompute_ref: bool = False  # reference log-probs computed once and cached on disk (shared by a sweep)
    ref_cache_dir: Optional[str] = None  # null: <cwd>/outputs/cache/reference_logps


def _m(cfg: Any, key: str) -> Any:
    return setting(cfg, f"method.{key}", DPOConfig)


def loss_types(cfg: Any) -> list[str]:
    lt = _m(cfg, "loss_type")
    return [lt] if isinstance(lt, str) else [str(t) for t in lt]


def needs_reference(cfg: Any) -> bool:
    return any(LOSS_NEEDS_REFERENCE.get(t, True) for t in loss_types(cfg))


def reference_described(cfg: Any, when: str = "") -> tuple[str, ...]:
    """The reference as the plan prints it (DPO and KTO): cached log-probs, the adapter-off policy, or a copy."""
    if _m(cfg, "precompute_ref"):
        return ("reference: log-probs precomputed once, cached on disk (no model in training)",)
    if setting(cfg, "peft.name") != "none":
        return (f"reference: the policy with its adapters disabled (no copy){when}",)
    return (f"reference: frozen copy of the initial policy{when}",)


def reference_held(cfg: Any) -> tuple[str, ...]:
    return ("reference",) if not _m(cfg, "precompute_ref") and setting(cfg, "peft.name") == "none" else ()


def _check(cfg: Any) -> None:
    types = loss_types(cfg)
    unknown = [t for t in types if t not in LOSS_NEEDS_REFERENCE]
    if unknown or not types:
        raise ConfigError(f"method.loss_type={types} has unknown entries {unknown}; choose from "
                          f"{', '.join(LOSS_NEEDS_REFERENCE)}")
    weights = _m(cfg, "loss_weights")
    if weights is not None and len(list(weights)) != len(types):
        raise ConfigError(f"method.loss_weights has {len(list(weights))} values for {len(types)} loss types "
                          f"{types}; give one weight per loss type or method.loss_weights=null")
    beta = float(_m(cfg, "beta"))
    if not beta > 0:
        raise ConfigError(f"method.beta={beta} must be > 0 (typical: 0.01 to 0.5)")
    eps = float(_m(cfg, "label_smoothing"))
    if not 0 <= eps < 0.5:
        raise ConfigError(f"method.label_smoothing={eps} must be in [0, 0.5)")
    if _m(cfg, "precompute_ref") and not needs_reference(cfg):
        raise ConfigError(f"method.loss_type={types} uses no reference model; drop method.precompute_ref")


REFERENCE_ZERO3_FIX = ("method.precompute_ref=true (log-probs computed once), or peft=lora (the reference is the "
                       "policy with adapters off)")

SPEC = MethodSpec("dpo", DPOConfig, data_kind="preference", unit="pairs", module="hydralign.methods.dpo:DPOModule",
                  order=1, sequences_per_example=2,
                  frozen=lambda cfg: reference_described(cfg) if needs_reference(cfg) else (),
                  held=lambda cfg: reference_held(cfg) if needs_reference(cfg) else (),
                  check=_check, packing=True, chunked_loss=True, starts_from_trained=True,
                  zero3_fix=REFERENCE_ZERO3_FIX,
                  report_metrics=("val/rewards/accuracies", "val/rewards/margins", "val/loss"))
