"""Online RL's part of the plan (pure): the rollout batch hierarchy (prompts x generations -> mini-batches -> micro-
batches with accumulation), its length in optimizer steps, the generator devices beside the learners (how far ahead
they may sample, how often they receive weights, which engine), and the rows ``dry_run`` prints for it."""

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
    generator_devices: int = 0  # generator processes beside the learners (0: the learners sample)
    max_staleness: int = 0  # rollout batches sampling may run ahead of training
    weight_sync_steps: int = 1  # optimizer steps between weight broadcasts to the generators
    backend: str = "hf"  # generation.backend: hf | vllm




GRPO_UNITS = {"grpo": "completions (each its own token mean)", "dapo": "completion tokens",
              "dr_grpo": "completions x max_completion_length"}


def generator_devices(cfg: Any, total: int, method: str, data_kind: str) -> int:
    """hardware.generator_devices: how many of the ``total`` devices only generate (Tulu 3: 1 of 8, with vLLM);
    the rest are the learners, the world size. Refused before anything loads where no learner would be left or
    the method does not generate while training."""
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
    return gens


BACKENDS = ("hf", "vllm")


def check_generators(cfg: Any, world: int, steps_per_rollout: int, schema: type) -> tuple[int, int, int, str]:
    """(generator devices, max_staleness, weight_sync_steps, backend), refused where they cannot be honoured."""
    gens = int(setting(cfg, "hardware.generator_devices") or 0)
    stale = int(setting(cfg, "method.max_staleness", schema))
    sync = int(setting(cfg, "method.weight_sync_steps", schema))
    backend = str(setting(cfg, "generation.backend"))
    if backend not in BACKENDS:
        raise ConfigError(f"generation.backend={backend} is unknown; choose from {', '.join(BACKENDS)}")
    if gens == 0:
        if stale > 0:
            raise ConfigError(f"method.max_staleness={stale} cannot be honoured: with hardware.generator_devices=0 "
                              "the learners sample between their own steps, so there is nothing to overlap; set "
                              "hardware.generator_devices=1 (one device samples while the others train) or "
                              "method.max_staleness=0")
        if backend == "vllm":
            _check_colocated(cfg)
        return 0, 0, sync, backend
    _check_generator_setup(cfg, gens, world, backend)
    if steps_per_rollout % sync:
        raise ConfigError(f"method.weight_sync_steps={sync} does not divide the {steps_per_rollout} optimizer steps "
                          f"per rollout batch: rollout batch t could not be sampled with the weights of rollout batch "
                          f"t - method.max_staleness ({stale}); use a divisor of {steps_per_rollout}, e.g. "
                          "method.weight_sync_steps=1")
    return gens, stale, sync, backend


def _check_colocated(cfg: Any) -> None:
    """generation.backend=vllm with hardware.generator_devices=0: each learner's own engine on its own GPU (TRL's
    colocate mode), refused where it cannot run."""
    if setting(cfg, "hardware.accelerator") != "gpu":
        raise ConfigError("generation.backend=vllm with hardware.generator_devices=0 builds a vLLM engine in each "
                          "learner, on its CUDA GPU (vLLM has no CPU engine here): use a GPU hardware preset "
                          "(hardware=1xA100 ...), or generation.backend=hf")
    _refuse_partial_weights(cfg, "generation.backend=vllm in the learners", "their engines", "loading them",
                            "generation.backend=hf")


def _refuse_partial_weights(cfg: Any, who: str, takers: str, purpose: str, fix: str) -> None:
    """An engine apart from the learners' own model (generator processes, the learners' vLLM engines) takes whole
    weights: gathering them from ZeRO's partitions, or merging PEFT adapters into them, is not built."""
    if setting(cfg, "hardware.strategy") == "deepspeed":
        raise ConfigError(f"{who} with hardware.strategy=deepspeed: gathering ZeRO's partitions for {purpose} is not "
                          f"built; use hardware.strategy=fsdp or ddp, or {fix}")
    if setting(cfg, "peft.name") != "none":
        raise ConfigError(f"{who} with peft={setting(cfg, 'peft.name')}: {takers} take whole weights, and merging "
                          f"adapters for {purpose} is not built; use peft=none, or {fix}")


def learner_nodes(nodes: int, devices: int, gens: int) -> int:
    """The nodes that hold learners: on several nodes the generators fill the last ones (``_check_generator_setup``);
    on one node it shares them."""
    return nodes - gens // devices if nodes > 1 else nodes


def _check_generator_setup(cfg: Any, gens: int, world: int, backend: str) -> None:
    if gens > world:
        raise ConfigError(f"hardware.generator_devices={gens} exceeds the {world} learners: each generator samples "
                          f"the prompts of whole learners; use at most hardware.generator_devices={world}")
    nodes, devices = int(setting(cfg, "hardware.nodes")), int(setting(cfg, "hardware.devices_per_node"))
    if nodes > 1 and gens % devices:
        whole = max(devices, gens // devices * devices)
        raise ConfigError(f"hardware.generator_devices={gens} on {nodes} nodes x {devices} devices: the generators are "
                          f"the last ranks, so a node would hold both learners and generators, and every node must "
                          f"hold as many learners (Lightning's devices x num_nodes); use whole nodes of generators "
                          f"(hardware.generator_devices={whole}), or hardware.nodes=1")
    _refuse_partial_weights(cfg, "hardware.generator_devices > 0", "the generators", "the weight broadcast",
                            "hardware.generator_devices=0")
    if backend == "vllm":
        if setting(cfg, "hardware.accelerator") != "gpu":
            raise ConfigError("generation.backend=vllm needs a CUDA GPU for each generator process (vLLM has no CPU "
                              "engine here): use a GPU hardware preset (hardware=1xA100 ...), or generation.backend=hf")


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
    generators, stale, sync, backend = check_generators(cfg, world, minis * iters, schema)
    completion = setting(cfg, "method.max_completion_length", schema) or setting(cfg, "eval.max_new_tokens")
    episodes = setting(cfg, "method.total_episodes", schema)
    rollout = RolloutPlan(
        prompts_per_rollout=prompts, generations_per_prompt=gens, samples_per_rollout=samples,
        prompts_per_device=prompts // world, num_mini_batches=minis, mini_batch_samples=mini,
        mini_batch_samples_per_device=local, micro_batch_samples_per_device=micro, grad_accum_per_mini_batch=accum,
        num_iterations=iters, steps_per_rollout=minis * iters, max_completion_length=int(completion),
        loss_type=str(setting(cfg, "method.loss_type", schema)),
        total_episodes=int(episodes) if episodes is not None else None, total_rollouts=None,
        episodes_per_step=samples / (minis * iters), generator_devices=generators, max_staleness=stale,
        weight_sync_steps=sync, backend=backend)
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
    learners = r.mini_batch_samples // r.mini_batch_samples_per_device
    own = ("with its own colocated vLLM engine on its GPU (generation.vllm_gpu_memory_utilization of it; the "
           "policy loaded into it before each rollout batch; importance sampling corrects vLLM's numerics)"
           if r.backend == "vllm" else "(HF generate, KV cache)")
    split = (f"{learners} learner devices (world_size) + 0 generator devices: each learner samples its own prompts "
             f"{own}") if not r.generator_devices else (
        f"{learners} learner devices (world_size) + {r.generator_devices} generator devices ({r.backend}): the "
        f"generators sample rollout batches up to {r.max_staleness} ahead of training (method.max_staleness), "
        f"weights broadcast every {r.weight_sync_steps} optimizer steps; importance sampling corrects the rest; "
        f"under torchrun or srun (one task per device) ranks 0..{learners - 1} learn and "
        + (f"rank {learners} generates" if r.generator_devices == 1 else
           f"ranks {learners}..{learners + r.generator_devices - 1} generate"))
    return [
        ("learners / generators", split),
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
