"""Online RL's part of the plan (pure): the rollout batch hierarchy (prompts x generations -> mini-batches -> micro-
batches with accumulation), its length in optimizer steps, generator devices (refused: the learners generate), and
the rows ``dry_run`` prints for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.errors import ConfigError


@dataclass(frozen=True)
class RolloutPlan:
    """Online RL's batch hierarchy (method data kind ``prompts``): rollout batch -> mini-batches (one
    optimizer step each) -> micro-batches per device with accumulation. Sizes in samples (= episodes:
    one prompt -> completion -> reward) unless named prompts."""

    prompts_per_rollout: int  # distinct prompts per rollout batch, all devices
    generations_per_prompt: int  # samples per prompt (its advantage group)
    samples_per_rollout: int  # prompts x generations = episodes per rollout batch, all devices
    prompts_per_device: int  # each device generates whole groups for its share of the prompts
    num_mini_batches: int  # optimizer steps per pass over a rollout batch
    mini_batch_samples: int  # samples per optimizer step, all devices (= the plan's effective_batch)
    mini_batch_samples_per_device: int  # local mini-batch
    micro_batch_samples_per_device: int  # samples per forward per device
    grad_accum_per_mini_batch: int  # forwards per device per optimizer step
    num_iterations: int  # passes over each rollout batch
    steps_per_rollout: int  # num_mini_batches x num_iterations
    max_completion_length: int  # new tokens per sample
    loss_type: str  # grpo | dapo | dr_grpo: what the step's loss sum is divided by
    total_episodes: Optional[int]  # budget (null: from trainer.max_steps)
    total_rollouts: Optional[int]
    episodes_per_step: float  # samples_per_rollout / steps_per_rollout (generated once per rollout)
    checkpoint_every_n_episodes: Optional[int] = None  # checkpoint.every_n_episodes (Plan.checkpoint_every_n_steps)




GRPO_UNITS = {"grpo": "completions (each its own token mean)", "dapo": "completion tokens",
              "dr_grpo": "completions x max_completion_length"}


def generator_devices(cfg: Any, total: int, method: str, data_kind: str) -> int:
    """hardware.generator_devices: how many of the ``total`` devices only generate (Tulu 3: 1 of 8, with vLLM);
    the rest are the learners, the world size. Only 0 runs here (the learners generate with HF ``generate``):
    a separate generator needs a generation server this repository does not have, so any other count is
    refused, before anything loads, saying what runs instead."""
    gens = int(setting(cfg, "hardware.generator_devices") or 0)
    if gens == 0:
        return 0
    if gens < 0:
        raise ConfigError(f"hardware.generator_devices={gens} must be >= 0 (0: the learners generate)")
    if data_kind != "prompts":
        raise ConfigError(f"hardware.generator_devices={gens}: method={method} does not generate while training; "
                          "every device is a learner: set hardware.generator_devices=0")
    if gens >= total:
        raise ConfigError(f"hardware.generator_devices={gens} leaves no learner among the {total} devices "
                          "(hardware.nodes x hardware.devices_per_node)")
    learners = total - gens
    nodes = max(1, int(setting(cfg, "hardware.nodes")))
    same = (f"; for the same {learners} learners set hardware.devices_per_node={learners // nodes} "
            "hardware.generator_devices=0" if learners % nodes == 0 else "")
    raise ConfigError(f"hardware.generator_devices={gens} ({learners} learners + {gens} generators of {total} "
                      "devices) needs a generation server on the generator devices (vLLM, as Tulu 3's 8th GPU), "
                      "which hydralign does not have. Supported: hardware.generator_devices=0, where every learner "
                      f"samples its own prompts with Hugging Face generate (KV cache){same}")


def rollout_sizes(cfg: Any, world: int, schema: type) -> tuple[RolloutPlan, int, int]:
    """(the rollout hierarchy with its totals unset, micro, grad_accum) for a method of data kind prompts
    (``schema``: its config dataclass, the source of its defaults).
    Every division checked, both numbers named."""
    prompts = int(setting(cfg, "method.prompts_per_step", schema))
    gens = int(setting(cfg, "method.num_generations", schema))
    minis = int(setting(cfg, "method.num_mini_batches", schema))
    iters = int(setting(cfg, "method.num_iterations", schema))
    samples = prompts * gens
    if prompts % world:
        raise ConfigError(f"method.prompts_per_step={prompts} is not divisible by world_size {world} (each device "
                          f"samples whole groups); use a multiple of {world}, e.g. method.prompts_per_step="
                          f"{(prompts // world + 1) * world}")
    if samples % minis:
        raise ConfigError(f"the rollout batch of {samples} samples (method.prompts_per_step {prompts} x "
                          f"method.num_generations {gens}) is not divisible by method.num_mini_batches={minis}")
    mini = samples // minis
    if mini % world:
        raise ConfigError(f"the mini-batch of {mini} samples is not divisible by world_size {world}; change "
                          "method.num_mini_batches or method.prompts_per_step")
    local = mini // world
    micro_given = setting(cfg, "batch.micro")
    if micro_given is None:
        cap = max(1, int(setting(cfg, "batch.max_micro")))
        micro = max(m for m in range(1, min(local, cap) + 1) if local % m == 0)
    else:
        micro = int(micro_given)
        if micro < 1:
            raise ConfigError(f"batch.micro={micro} must be >= 1 (samples per device per forward)")
        if local % micro:
            raise ConfigError(f"the local mini-batch of {local} samples per device is not divisible by batch.micro="
                              f"{micro}; use a divisor of {local}, or batch.micro=null to derive one")
    accum = local // micro
    given = setting(cfg, "batch.grad_accum")
    if given is not None and int(given) != accum:
        raise ConfigError(f"batch.grad_accum={given} disagrees with the derived {accum} (local mini-batch {local} / "
                          f"batch.micro {micro}); drop batch.grad_accum")
    completion = setting(cfg, "method.max_completion_length", schema) or setting(cfg, "eval.max_new_tokens")
    episodes = setting(cfg, "method.total_episodes", schema)
    rollout = RolloutPlan(
        prompts_per_rollout=prompts, generations_per_prompt=gens, samples_per_rollout=samples,
        prompts_per_device=prompts // world, num_mini_batches=minis, mini_batch_samples=mini,
        mini_batch_samples_per_device=local, micro_batch_samples_per_device=micro, grad_accum_per_mini_batch=accum,
        num_iterations=iters, steps_per_rollout=minis * iters, max_completion_length=int(completion),
        loss_type=str(setting(cfg, "method.loss_type", schema)),
        total_episodes=int(episodes) if episodes is not None else None, total_rollouts=None,
        episodes_per_step=samples / (minis * iters))
    return rollout, micro, accum


def rollout_steps(cfg: Any, rollout: RolloutPlan) -> int:
    """Total optimizer steps: from method.total_episodes (whole rollout batches) or trainer.max_steps."""
    per = rollout.steps_per_rollout
    if rollout.total_episodes is not None:
        rollouts = rollout.total_episodes // rollout.samples_per_rollout
        if rollouts < 1:
            raise ConfigError(f"method.total_episodes={rollout.total_episodes} is less than one rollout batch of "
                              f"{rollout.samples_per_rollout} samples; raise it or lower method.prompts_per_step")
        return rollouts * per
    max_steps = setting(cfg, "trainer.max_steps")
    if max_steps is None or int(max_steps) < 1:
        raise ConfigError("training length is not set: give method.total_episodes=N (samples) or trainer.max_steps=N")
    if int(max_steps) % per:
        raise ConfigError(f"trainer.max_steps={max_steps} is not a multiple of the {per} optimizer steps per rollout "
                          f"batch (method.num_mini_batches x method.num_iterations); use trainer.max_steps="
                          f"{(int(max_steps) // per + 1) * per}")
    return int(max_steps)


def format_rollout(r: Optional[RolloutPlan]) -> list[tuple[str, Any]]:
    """The online-RL hierarchy rows of the plan (none for offline methods)."""
    if r is None:
        return []
    episodes = (f"{r.total_episodes} budget -> {r.total_rollouts} rollout batches x {r.samples_per_rollout}"
                if r.total_episodes is not None else f"{r.total_rollouts} rollout batches x {r.samples_per_rollout}"
                " (from trainer.max_steps)")
    return [
        ("learners / generators", f"{r.mini_batch_samples // r.mini_batch_samples_per_device} learner devices "
                                  "(world_size) + 0 generator devices: each learner samples its "
                                  "own prompts (HF generate, KV cache)"),
        ("rollout batch (samples)", f"{r.samples_per_rollout} = {r.prompts_per_rollout} prompts x "
                                    f"{r.generations_per_prompt} generations ({r.prompts_per_device} prompts per device)"),
        ("mini-batch (samples)", f"{r.mini_batch_samples} = rollout {r.samples_per_rollout} / {r.num_mini_batches} "
                                 f"mini-batches = {r.mini_batch_samples // r.mini_batch_samples_per_device} devices x "
                                 f"local {r.mini_batch_samples_per_device}; one optimizer step each"),
        ("micro-batch (per device)", f"{r.micro_batch_samples_per_device} samples x {r.grad_accum_per_mini_batch} "
                                     f"accumulation = local mini-batch {r.mini_batch_samples_per_device}"),
        ("steps per rollout", f"{r.steps_per_rollout} = {r.num_mini_batches} mini-batches x {r.num_iterations} "
                              "iterations"),
        ("episodes", f"{episodes} (generated once per rollout; {r.episodes_per_step:g} per optimizer step)"),
        ("max completion length", f"{r.max_completion_length} tokens, loss type {r.loss_type}"),
    ] + ([("checkpoints", f"every {r.checkpoint_every_n_episodes} episodes = "
                          f"{round(r.checkpoint_every_n_episodes / r.episodes_per_step)} optimizer steps x "
                          f"{r.episodes_per_step:g} episodes, each validated (pick one with init_from=<run>:best)")]
         if r.checkpoint_every_n_episodes is not None else [])
