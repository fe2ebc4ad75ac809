"""The length and cadence part of the plan (pure): the train split's count, steps per epoch, total steps and epochs,
warmup, the schedule's and the training loop's checks, and the rolling checkpoints' cadence."""

from __future__ import annotations

import math
from typing import Any, Optional

from hydralign.config.choices import OPTIMIZERS, SCHEDULES
from hydralign.config.read import setting
from hydralign.data.arithmetic import check_balanced_fraction  # pure: random and errors only
from hydralign.errors import ConfigError
from hydralign.plan.mixture import check_mixture, mixture_count
from hydralign.plan.rollout import RolloutPlan, rollout_steps

MAX_SEED = 2**32 - 1  # Lightning's seed_everything accepts [0, 2^32)
GENERATED = ("val/exact_match", "val/exact_match_flex", "val/repetition_rate")


def config_train_count(cfg: Any, packing: str, per_record: int = 1) -> Optional[int]:
    """The train split's size as far as the config knows it (the synthetic task, ``data.num_examples``); packed
    rows are counted once the data is tokenized and packed."""
    if packing == "packed":
        return None
    if setting(cfg, "data.source") == "arithmetic":
        check_balanced_fraction(float(setting(cfg, "data.arithmetic.balanced_fraction")))
        return int(setting(cfg, "data.arithmetic.num_train")) * per_record
    if setting(cfg, "data.source") == "mixture":
        n = mixture_count(check_mixture(cfg))
        if n is None or setting(cfg, "data.val_files"):
            return n
        return n - max(1, int(round(n * float(setting(cfg, "data.val_fraction") or 0.0))))
    if setting(cfg, "data.num_examples") is not None:
        n = int(setting(cfg, "data.num_examples"))
        return n - int(round(n * float(setting(cfg, "data.val_fraction") or 0.0)))
    return None


def steps_per_epoch_of(count: Optional[int], effective: int, rollout: Optional[RolloutPlan], packing: str
                       ) -> Optional[int]:
    """Optimizer steps per pass over ``count`` train items; a split smaller than one step is refused."""
    if count is None:
        return None
    if rollout is not None:
        if count < rollout.prompts_per_rollout:
            raise ConfigError(f"the train split has {count} prompts, fewer than one rollout batch needs "
                              f"(method.prompts_per_step={rollout.prompts_per_rollout}); lower it or add data")
        return count // rollout.prompts_per_rollout * rollout.steps_per_rollout
    if count < effective:
        items = "packed rows" if packing == "packed" else "examples"
        raise ConfigError(f"the train split has {count} {items}, fewer than one optimizer "
                          f"step needs (batch.effective={effective}); lower batch.effective or add data")
    return count // effective


def training_length(cfg: Any, rollout: Optional[RolloutPlan], steps_per_epoch: Optional[int]
                    ) -> tuple[Optional[int], Optional[float]]:
    """(total optimizer steps, epochs): from trainer.max_steps, trainer.max_epochs or an online method's episodes."""
    max_steps, max_epochs = setting(cfg, "trainer.max_steps"), setting(cfg, "trainer.max_epochs")
    if max_steps is not None and int(max_steps) != -1 and int(max_steps) < 1:  # -1: Lightning's "no limit"
        raise ConfigError(f"trainer.max_steps={max_steps} must be >= 1 (optimizer steps); or set it to null "
                          "and give trainer.max_epochs=N (data passes)")
    if max_epochs is not None and float(max_epochs) != -1 and float(max_epochs) <= 0:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be > 0 (data passes); or set it to null and "
                          "give trainer.max_steps=N (optimizer steps)")
    if rollout is not None:
        total = rollout_steps(cfg, rollout)
        return total, (total / steps_per_epoch if steps_per_epoch else None)
    if max_steps is not None and int(max_steps) > 0:
        return int(max_steps), (int(max_steps) / steps_per_epoch if steps_per_epoch else None)
    if max_epochs is not None and float(max_epochs) > 0:
        epochs = float(max_epochs)
        return (max(1, math.ceil(epochs * steps_per_epoch)) if steps_per_epoch else None), epochs
    raise ConfigError("training length is not set: give trainer.max_steps=N (optimizer steps) or "
                      "trainer.max_epochs=N (data passes)")


def check_schedule(cfg: Any) -> str:
    """The schedule's name, its warmup keys and multistep's milestones, checked."""
    schedule = setting(cfg, "schedule.name")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule} is unknown; choose one of: {', '.join(SCHEDULES)}")
    w_steps, w_ratio = setting(cfg, "schedule.warmup_steps"), setting(cfg, "schedule.warmup_ratio")
    if w_steps is not None and w_ratio is not None and int(w_steps) > 0 and float(w_ratio) > 0:
        raise ConfigError(f"give schedule.warmup_steps ({w_steps}) or schedule.warmup_ratio ({w_ratio}), "
                          "not both: set the other to null")
    if w_ratio is not None and not 0 <= float(w_ratio) < 1:
        raise ConfigError(f"schedule.warmup_ratio={w_ratio} must be in [0, 1)")
    if schedule == "multistep":
        ms, fs = list(setting(cfg, "schedule.milestones")), list(setting(cfg, "schedule.factors"))
        if len(ms) != len(fs) or any(not 0 < m < 1 for m in ms) or ms != sorted(ms):
            raise ConfigError(f"schedule.milestones={ms} must be increasing fractions in (0, 1), one per "
                              f"schedule.factors={fs}")
    return schedule


def warmup_steps(cfg: Any, total_steps: Optional[int]) -> Optional[int]:
    """schedule.warmup_steps, or warmup_ratio x the total (None while the total is unknown); below the total."""
    w_steps, w_ratio = setting(cfg, "schedule.warmup_steps"), setting(cfg, "schedule.warmup_ratio")
    warmup: Optional[int]
    if w_steps is not None and int(w_steps) > 0:
        warmup = int(w_steps)
    elif w_ratio is not None:
        warmup = int(round(float(w_ratio) * total_steps)) if total_steps is not None else None
    else:
        warmup = 0
    if warmup is not None and total_steps is not None and warmup >= total_steps:
        raise ConfigError(f"schedule.warmup_steps={warmup} is not below the run's {total_steps} total steps; "
                          f"lower it (e.g. schedule.warmup_steps={max(0, total_steps // 10)}) or use "
                          "schedule.warmup_ratio")
    return warmup


def check_training(cfg: Any) -> tuple[int, float, int]:
    """(eval.every_n_steps, lr, seed), checked with the monitored metrics and the optimizer's name."""
    if int(setting(cfg, "eval.num_generate")) == 0:
        for key in ("checkpoint.monitor", "optimized_metric"):
            if setting(cfg, key) in GENERATED:
                raise ConfigError(f"{key}={setting(cfg, key)} comes from generation, but eval.num_generate=0; "
                                  f"set {key}=val/loss or eval.num_generate > 0")
    every = int(setting(cfg, "eval.every_n_steps"))
    if every < 1:
        raise ConfigError(f"eval.every_n_steps={every} must be >= 1")
    lr = float(setting(cfg, "optimizer.lr"))
    if not lr > 0:
        raise ConfigError(f"lr={lr} must be > 0")
    seed = int(setting(cfg, "seed"))
    if not 0 <= seed <= MAX_SEED:  # Lightning's seed_everything refuses others, only once training starts
        raise ConfigError(f"seed={seed} must be in [0, {MAX_SEED}]")
    optimizer = setting(cfg, "optimizer.name")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={optimizer} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    return every, lr, seed


def checkpoint_steps(cfg: Any, method: str, rollout: Optional[RolloutPlan], eval_every: int) -> Optional[int]:
    """Optimizer steps between rolling checkpoints: checkpoint.every_n_steps, or checkpoint.every_n_episodes
    converted for an online method. An episode is one sampled completion, generated once per rollout batch, so
    a step is ``samples_per_rollout / steps_per_rollout`` episodes (the mini-batch of all devices when
    num_iterations is 1). Those steps must be whole and validated, else ``<run>:best`` could not pick them."""
    steps, episodes = setting(cfg, "checkpoint.every_n_steps"), setting(cfg, "checkpoint.every_n_episodes")
    if episodes is None:
        return int(steps) if steps is not None else None
    episodes = int(episodes)
    if steps is not None:
        raise ConfigError(f"give checkpoint.every_n_steps ({steps}) or checkpoint.every_n_episodes ({episodes}), "
                          "not both: set the other to null")
    if rollout is None:
        raise ConfigError(f"checkpoint.every_n_episodes={episodes} counts the episodes of an online method "
                          f"(method=grpo); method={method} trains on fixed data: use checkpoint.every_n_steps")
    per_rollout, steps_per = rollout.samples_per_rollout, rollout.steps_per_rollout
    unit = per_rollout // math.gcd(per_rollout, steps_per)  # the fewest episodes that are whole steps
    if episodes < 1 or episodes % unit:
        up = max(unit, -(-episodes // unit) * unit)
        raise ConfigError(f"checkpoint.every_n_episodes={episodes} is not a whole number of optimizer steps of "
                          f"{rollout.episodes_per_step:g} episodes each (rollout batch {per_rollout} samples / "
                          f"{steps_per} steps per rollout); use a multiple of {unit}, e.g. "
                          f"checkpoint.every_n_episodes={up}")
    n = episodes * steps_per // per_rollout
    if n % eval_every:
        raise ConfigError(f"checkpoint.every_n_episodes={episodes} is every {n} optimizer steps, but eval.every_n_steps="
                          f"{eval_every} does not divide {n}: a checkpoint at a step without validation cannot be "
                          f"picked by :best; set eval.every_n_steps={n} (or a divisor of it)")
    return n
