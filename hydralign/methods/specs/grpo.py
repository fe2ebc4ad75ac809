"""Group relative policy optimization with verifiable rewards (``method=grpo``; module hydralign/methods/grpo.py,
losses hydralign/losses/grpo.py, verifiers hydralign/rewards.py). Names follow TRL's GRPOConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.config.schema import MethodConfig
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec
from hydralign.rewards import check_rewards, check_rewards_by_source


@dataclass
class GRPOConfig(MethodConfig):
    """Group relative policy optimization with verifiable rewards (hydralign/methods/grpo.py, losses in
    hydralign/losses/grpo.py, verifiers in hydralign/rewards.py). Names follow TRL's GRPOConfig. One
    rollout batch = prompts_per_step x num_generations samples (episodes) over all devices; it is cut
    into num_mini_batches mini-batches (one optimizer step each), each into batch.micro samples per device
    per forward, and passed over num_iterations times."""

    prompts_per_step: int = 16  # distinct prompts per rollout batch, all devices
    num_generations: int = 4  # samples per prompt (the group its advantages are normalized in)
    num_mini_batches: int = 1  # optimizer steps per pass over a rollout batch
    num_iterations: int = 1  # passes over each rollout batch (> 1: old log-probs kept from generation)
    total_episodes: Optional[int] = None  # budget in episodes (samples); sets the steps (null: trainer.max_steps)
    max_completion_length: Optional[int] = None  # new tokens per sample (null: eval.max_new_tokens)
    temperature: float = 1.0  # sampling temperature (log-probs are taken at the same temperature)
    loss_type: str = "dapo"  # grpo (per-sequence mean) | dapo (token mean of the step) | dr_grpo (constant)
    scale_rewards: str = "group"  # group | batch | none: the std advantages are divided by
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: Optional[float] = None  # upper clip (DAPO's clip-higher: 0.28); null: epsilon
    beta: float = 0.0  # KL to the reference (k3); 0: no reference loaded
    mask_truncated_completions: bool = False  # completions that hit max_completion_length add no loss
    rewards: dict[str, float] = field(default_factory=lambda: {"exact_answer": 1.0})  # verifier: weight
    # source (a prompt record's `dataset` field) -> {verifier: weight}; other sources use `rewards`
    rewards_by_source: dict[str, dict[str, float]] = field(default_factory=dict)
    format_pattern: Optional[str] = None  # the format verifier's regex (null: <think>..</think><answer>..</answer>)
    completion_only: bool = True  # validation loss on the reference answers' tokens only
    # Generator processes (hardware.generator_devices >= 1; TRL's AsyncGRPO names):
    max_staleness: int = 0  # rollout batches sampling may run ahead of training (0: always the newest weights)
    weight_sync_steps: int = 1  # optimizer steps between weight broadcasts to the generators (divides the
    # optimizer steps per rollout batch)
    # Off-policy correction where the sampler's log-probs are not the learner's (TRL's vllm_importance_sampling_*):
    importance_sampling_mode: str = "token_truncate"  # token_truncate | token_mask | sequence_truncate | sequence_mask
    importance_sampling_clip_max: float = 3.0  # ratios above: clamped (truncate) or zeroed (mask)
    importance_sampling_clip_min: float = 0.0  # ratios below: the same (0: no lower bound)


LOSS_TYPES = ("grpo", "dapo", "dr_grpo")  # hydralign.losses.grpo.LOSS_TYPES (this module stays torch-free)
SCALE_REWARDS = ("group", "batch", "none")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")  # hydralign.losses.grpo.IS_MODES


def _m(cfg: Any, key: str) -> Any:
    return setting(cfg, f"method.{key}", GRPOConfig)


def _frozen(cfg: Any) -> tuple[str, ...]:
    if float(_m(cfg, "beta")) == 0.0:
        return ()
    if setting(cfg, "peft.name") != "none":
        return ("reference: the policy with its adapters disabled (no copy), log-probs once per rollout",)
    return ("reference: frozen copy of the initial policy, log-probs once per rollout",)


def _held(cfg: Any) -> tuple[str, ...]:
    return ("reference",) if float(_m(cfg, "beta")) != 0.0 and setting(cfg, "peft.name") == "none" else ()


def _check_clip(cfg: Any) -> None:
    eps, high = float(_m(cfg, "epsilon")), _m(cfg, "epsilon_high")
    if not 0 < eps < 1:
        raise ConfigError(f"method.epsilon={eps} must be in (0, 1) (TRL: 0.2)")
    if high is not None and float(high) < eps:
        raise ConfigError(f"method.epsilon_high={high} is below method.epsilon={eps}; clip-higher raises the upper "
                          "bound (DAPO: 0.28), or set method.epsilon_high=null")


def _check_async(cfg: Any) -> None:
    mode = _m(cfg, "importance_sampling_mode")
    if mode not in IS_MODES:
        raise ConfigError(f"method.importance_sampling_mode={mode} is unknown; choose from {', '.join(IS_MODES)}")
    hi, lo = float(_m(cfg, "importance_sampling_clip_max")), float(_m(cfg, "importance_sampling_clip_min"))
    if not 0 <= lo < hi:
        raise ConfigError(f"method.importance_sampling_clip_min={lo} and _clip_max={hi} must satisfy 0 <= min < max "
                          "(TRL: max 3.0)")
    if int(_m(cfg, "max_staleness")) < 0:
        raise ConfigError(f"method.max_staleness={_m(cfg, 'max_staleness')} must be >= 0 (0: synchronous)")
    if int(_m(cfg, "weight_sync_steps")) < 1:
        raise ConfigError(f"method.weight_sync_steps={_m(cfg, 'weight_sync_steps')} must be >= 1")


def _check(cfg: Any) -> None:
    loss_type = _m(cfg, "loss_type")
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"method.loss_type={loss_type} is unknown; choose from {', '.join(LOSS_TYPES)}")
    scale = _m(cfg, "scale_rewards")
    if scale not in SCALE_REWARDS:
        raise ConfigError(f"method.scale_rewards={scale} is unknown; choose from {', '.join(SCALE_REWARDS)}")
    g = int(_m(cfg, "num_generations"))
    if g < 2:
        raise ConfigError(f"method.num_generations={g} must be >= 2: advantages compare the samples of one prompt")
    for key in ("prompts_per_step", "num_mini_batches", "num_iterations"):
        v = int(_m(cfg, key))
        if v < 1:
            raise ConfigError(f"method.{key}={v} must be >= 1")
    _check_clip(cfg)
    if float(_m(cfg, "beta")) < 0:
        raise ConfigError(f"method.beta={_m(cfg, 'beta')} must be >= 0 (0: no reference model)")
    if not float(_m(cfg, "temperature")) > 0:
        raise ConfigError(f"method.temperature={_m(cfg, 'temperature')} must be > 0")
    _check_async(cfg)
    check_rewards({str(k): v for k, v in dict(_m(cfg, "rewards")).items()})
    by_source = _m(cfg, "rewards_by_source")
    check_rewards_by_source({str(k): (dict(v) if hasattr(v, "items") else v) for k, v in dict(by_source).items()})


SPEC = MethodSpec("grpo", GRPOConfig, data_kind="prompts", unit="sequences", module="hydralign.methods.grpo:GRPOModule",
                  order=2, frozen=_frozen, held=_held, check=_check, starts_from_trained=True,
                  zero3_fix="peft=lora (the reference is the policy with adapters off), or method.beta=0 (no reference)",
                  report_metrics=("rewards/mean", "accuracy", "val/exact_match"))  # rollouts: logged per step
