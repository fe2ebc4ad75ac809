"""The one list of methods. Pure (no torch): the plan and the CLI read it before anything heavy loads.

A method is one ``MethodSpec``: its config schema (registered in Hydra's ConfigStore group
``method`` as ``<name>_schema``, the first default of ``conf/method/<name>.yaml``), the kind of data
it trains on, the unit its loss is normalized by over a whole optimizer step (DESIGN.md section 5),
the LightningModule that turns a batch into ``(loss_sum, unit_count, metric_sums)``, the frozen
models it needs, and its own plan-time checks. Adding a method is adding one entry here, its schema,
its module and its ``conf/method/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.schema import DistillConfig, DPOConfig, GRPOConfig, SFTConfig
from hydralign.errors import ConfigError

DATA_KINDS = ("sft", "preference", "prompts")
UNITS = ("tokens", "pairs", "sequences")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    schema: type  # config dataclass, extends schema.MethodConfig
    data_kind: str  # sft: conversations | preference: prompt + chosen + rejected | prompts (online RL)
    unit: str  # what one optimizer step's loss sum is divided by: tokens | pairs | sequences
    module: str  # "package.module:Class" of the LightningModule, imported when training starts
    sequences_per_example: int = 1  # forward rows per example (2 for a chosen/rejected pair)
    frozen: Optional[Callable[[Any], tuple[str, ...]]] = None  # cfg -> frozen models, described
    # cfg -> names of the frozen models held in memory while training (a copy, not a cache or a view):
    # what a strategy must shard besides the policy (hydralign.strategies.check_strategy).
    held: Optional[Callable[[Any], tuple[str, ...]]] = None
    check: Optional[Callable[[Any], None]] = None  # cfg -> None, raises ConfigError (pure)
    packing: bool = False  # whether data.packing (padding_free / packed micro-batches) applies

    def frozen_models(self, cfg: Any) -> tuple[str, ...]:
        return self.frozen(cfg) if self.frozen else ()

    def held_models(self, cfg: Any) -> tuple[str, ...]:
        return self.held(cfg) if self.held else ()

    def module_class(self):
        path, _, cls = self.module.partition(":")
        return getattr(importlib.import_module(path), cls)


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
        if node is None:
            return default
    return node


def dpo_loss_types(cfg: Any) -> list[str]:
    lt = _get(cfg, "method.loss_type", "sigmoid")
    return [lt] if isinstance(lt, str) else [str(t) for t in lt]


def dpo_needs_reference(cfg: Any) -> bool:
    from hydralign.losses.preference_types import LOSS_NEEDS_REFERENCE

    return any(LOSS_NEEDS_REFERENCE.get(t, True) for t in dpo_loss_types(cfg))


def _dpo_frozen(cfg: Any) -> tuple[str, ...]:
    if not dpo_needs_reference(cfg):
        return ()
    if _get(cfg, "method.precompute_ref", False):
        return ("reference: log-probs precomputed once, cached on disk (no model in training)",)
    if _get(cfg, "peft.name", "none") != "none":
        return ("reference: the policy with its adapters disabled (no copy)",)
    return ("reference: frozen copy of the initial policy",)


def _dpo_held(cfg: Any) -> tuple[str, ...]:
    copied = (dpo_needs_reference(cfg) and not _get(cfg, "method.precompute_ref", False)
              and _get(cfg, "peft.name", "none") == "none")
    return ("reference",) if copied else ()


def _dpo_check(cfg: Any) -> None:
    from hydralign.losses.preference_types import LOSS_NEEDS_REFERENCE

    types = dpo_loss_types(cfg)
    unknown = [t for t in types if t not in LOSS_NEEDS_REFERENCE]
    if unknown or not types:
        raise ConfigError(f"method.loss_type={types} has unknown entries {unknown}; choose from "
                          f"{', '.join(LOSS_NEEDS_REFERENCE)}")
    weights = _get(cfg, "method.loss_weights")
    if weights is not None and len(list(weights)) != len(types):
        raise ConfigError(f"method.loss_weights has {len(list(weights))} values for {len(types)} loss types "
                          f"{types}; give one weight per loss type or method.loss_weights=null")
    beta = float(_get(cfg, "method.beta", 0.1))
    if not beta > 0:
        raise ConfigError(f"method.beta={beta} must be > 0 (typical: 0.01 to 0.5)")
    eps = float(_get(cfg, "method.label_smoothing", 0.0))
    if not 0 <= eps < 0.5:
        raise ConfigError(f"method.label_smoothing={eps} must be in [0, 0.5)")
    if _get(cfg, "method.precompute_ref", False) and not dpo_needs_reference(cfg):
        raise ConfigError(f"method.loss_type={types} uses no reference model; drop method.precompute_ref")


GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo")  # hydralign.losses.grpo.LOSS_TYPES (this module stays torch-free)
GRPO_SCALE_REWARDS = ("group", "batch", "none")


def _grpo_frozen(cfg: Any) -> tuple[str, ...]:
    if float(_get(cfg, "method.beta", 0.0)) == 0.0:
        return ()
    if _get(cfg, "peft.name", "none") != "none":
        return ("reference: the policy with its adapters disabled (no copy), log-probs once per rollout",)
    return ("reference: frozen copy of the initial policy, log-probs once per rollout",)


def _grpo_held(cfg: Any) -> tuple[str, ...]:
    copied = float(_get(cfg, "method.beta", 0.0)) != 0.0 and _get(cfg, "peft.name", "none") == "none"
    return ("reference",) if copied else ()


def _grpo_check(cfg: Any) -> None:
    from hydralign.rewards import check_rewards, check_rewards_by_source

    loss_type = _get(cfg, "method.loss_type", "dapo")
    if loss_type not in GRPO_LOSS_TYPES:
        raise ConfigError(f"method.loss_type={loss_type} is unknown; choose from {', '.join(GRPO_LOSS_TYPES)}")
    scale = _get(cfg, "method.scale_rewards", "group")
    if scale not in GRPO_SCALE_REWARDS:
        raise ConfigError(f"method.scale_rewards={scale} is unknown; choose from {', '.join(GRPO_SCALE_REWARDS)}")
    g = int(_get(cfg, "method.num_generations", 4))
    if g < 2:
        raise ConfigError(f"method.num_generations={g} must be >= 2: advantages compare the samples of one prompt")
    for key in ("prompts_per_step", "num_mini_batches", "num_iterations"):
        v = int(_get(cfg, f"method.{key}", 1))
        if v < 1:
            raise ConfigError(f"method.{key}={v} must be >= 1")
    eps, high = float(_get(cfg, "method.epsilon", 0.2)), _get(cfg, "method.epsilon_high")
    if not 0 < eps < 1:
        raise ConfigError(f"method.epsilon={eps} must be in (0, 1) (TRL: 0.2)")
    if high is not None and float(high) < eps:
        raise ConfigError(f"method.epsilon_high={high} is below method.epsilon={eps}; clip-higher raises the upper "
                          "bound (DAPO: 0.28), or set method.epsilon_high=null")
    if float(_get(cfg, "method.beta", 0.0)) < 0:
        raise ConfigError(f"method.beta={_get(cfg, 'method.beta')} must be >= 0 (0: no reference model)")
    if not float(_get(cfg, "method.temperature", 1.0)) > 0:
        raise ConfigError(f"method.temperature={_get(cfg, 'method.temperature')} must be > 0")
    rewards = _get(cfg, "method.rewards", {"exact_answer": 1.0})
    check_rewards({str(k): v for k, v in dict(rewards).items()})
    by_source = _get(cfg, "method.rewards_by_source", {})
    check_rewards_by_source({str(k): (dict(v) if hasattr(v, "items") else v) for k, v in dict(by_source).items()})


DISTILL_LOSSES = ("forward_kl", "reverse_kl", "jsd", "seqkd", "minillm")
DISTILL_GENERATING = ("seqkd", "minillm")  # losses on generated answers to the data's prompts


def _distill_frozen(cfg: Any) -> tuple[str, ...]:
    ref, loss = _get(cfg, "method.teacher_from"), _get(cfg, "method.loss", "forward_kl")
    if loss == "seqkd":
        return (f"teacher {ref}: greedy answers to every train and val prompt, generated once and cached on disk "
                "(no teacher in memory while training)",)
    if loss == "minillm":
        return (f"teacher {ref}: frozen, scores the student's samples (teacher_mix "
                f"{_get(cfg, 'method.teacher_mix', 0.0)})",)
    return (f"teacher {ref}: frozen, one forward per micro-batch",)


def _distill_held(cfg: Any) -> tuple[str, ...]:
    return () if _get(cfg, "method.loss", "forward_kl") == "seqkd" else ("teacher",)


def _distill_check(cfg: Any) -> None:
    loss = _get(cfg, "method.loss", "forward_kl")
    if loss not in DISTILL_LOSSES:
        raise ConfigError(f"method.loss={loss} is unknown; choose from {', '.join(DISTILL_LOSSES)}")
    if not _get(cfg, "method.teacher_from"):
        raise ConfigError("method=distill needs method.teacher_from=<teacher>: a run folder (with :best, :last or "
                          ":step=N), runs:/<mlflow run id> or a Hugging Face directory")
    temperature = float(_get(cfg, "method.temperature", 1.0))
    if not temperature > 0:
        raise ConfigError(f"method.temperature={temperature} must be > 0 (1 = the models' own distributions)")
    if loss in DISTILL_GENERATING and temperature != 1.0:
        raise ConfigError(f"method.temperature={temperature} applies to forward_kl, reverse_kl and jsd; method.loss="
                          f"{loss} learns from answers at temperature 1: set method.temperature=1.0")
    beta = float(_get(cfg, "method.jsd_beta", 0.5))
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"method.jsd_beta={beta} must be in [0, 1] (0 = forward KL, 1 = reverse KL)")
    weight = float(_get(cfg, "method.sft_weight", 0.0))
    if weight < 0:
        raise ConfigError(f"method.sft_weight={weight} must be >= 0")
    mix = float(_get(cfg, "method.teacher_mix", 0.0))
    if not 0.0 <= mix < 1.0:
        raise ConfigError(f"method.teacher_mix={mix} must be in [0, 1) (MiniLLM uses 0.2)")
    if mix > 0 and loss != "minillm":
        raise ConfigError(f"method.teacher_mix={mix} is MiniLLM's teacher-mixed sampling; with method.loss={loss} "
                          "set method.teacher_mix=0.0, or method.loss=minillm")
    new_tokens = _get(cfg, "method.max_new_tokens")
    if new_tokens is not None and int(new_tokens) < 1:
        raise ConfigError(f"method.max_new_tokens={new_tokens} must be >= 1, or null for eval.max_new_tokens")
    if loss in DISTILL_GENERATING and not _get(cfg, "method.completion_only", True):
        raise ConfigError(f"method.loss={loss} answers the data's prompts, which method.completion_only=false "
                          "erases (every token is a target): set method.completion_only=true")


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec("sft", SFTConfig, data_kind="sft", unit="tokens", module="hydralign.methods.sft:SFTModule",
                      packing=True),
    "dpo": MethodSpec("dpo", DPOConfig, data_kind="preference", unit="pairs",
                      module="hydralign.methods.dpo:DPOModule", sequences_per_example=2,
                      frozen=_dpo_frozen, held=_dpo_held, check=_dpo_check, packing=True),
    "grpo": MethodSpec("grpo", GRPOConfig, data_kind="prompts", unit="sequences",
                       module="hydralign.methods.grpo:GRPOModule", frozen=_grpo_frozen, held=_grpo_held,
                       check=_grpo_check),
    "distill": MethodSpec("distill", DistillConfig, data_kind="sft", unit="tokens",
                          module="hydralign.methods.distill:DistillModule", frozen=_distill_frozen,
                          held=_distill_held, check=_distill_check),
}


def get_method(name: Optional[str]) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method={name} is not available; choose one of: {', '.join(METHODS)}")
    return METHODS[name]
