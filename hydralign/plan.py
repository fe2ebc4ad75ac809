"""The plan: every size a run derives from its config, computed once, checked, frozen.

Pure (no torch, no I/O). Downstream code reads sizes from the plan and never re-derives them.
Words follow TRL's batch glossary: *micro* = examples per device per forward, *global micro* =
micro x world size, *effective* = examples per optimizer step over all devices and accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from hydralign.config.schema import OptimizerConfig, ScheduleConfig
from hydralign.data.arithmetic import check_balanced_fraction  # pure: random and errors only
from hydralign.errors import ConfigError
from hydralign.memory import MemoryEstimate, estimate_memory, format_memory, memory_inputs
from hydralign.methods.registry import METHODS, get_method
from hydralign.optimizers import OPTIMIZERS
from hydralign.strategies import check_strategy

SCHEDULES = ("constant", "linear", "cosine", "multistep")
MAX_SEED = 2**32 - 1  # Lightning's seed_everything accepts [0, 2^32)
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true")


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


@dataclass(frozen=True)
class Plan:
    method: str
    data_kind: str  # sft | preference | prompts
    loss_unit: str  # a step's loss is its sum over these, divided once by their count: tokens | pairs
    frozen_models: tuple[str, ...]  # the method's frozen models (DPO's reference), described
    model: str
    accelerator: str
    strategy: str
    precision: str
    nodes: int
    devices_per_node: int
    world_size: int
    micro_batch: int  # examples per device per forward
    grad_accum: int  # forwards per device per optimizer step
    global_micro_batch: int  # micro_batch x world_size
    effective_batch: int  # examples per optimizer step, all devices
    max_seq_len: int
    max_tokens_per_step: int  # effective_batch x sequences per example x max_seq_len (padding not counted)
    num_train_examples: Optional[int]  # None until the data is loaded (files, unknown hub sets)
    steps_per_epoch: Optional[int]
    total_steps: Optional[int]
    epochs: Optional[float]
    warmup_steps: Optional[int]
    lr: float
    schedule: str
    eval_every_n_steps: int
    seed: int
    num_parameters: Optional[float] = None  # model.num_parameters, as the model card states it
    memory: Optional[MemoryEstimate] = None  # per device, from the config (hydralign.memory); None: size unknown
    rollout: Optional[RolloutPlan] = None  # online RL (data kind prompts): the batch hierarchy
    checkpoint_every_n_steps: Optional[int] = None  # rolling checkpoints (checkpoint.every_n_steps or _episodes)
    packing: str = "none"  # none | padding_free | packed (hydralign.data.packing)
    max_tokens_per_micro: Optional[int] = None  # packed: tokens per row; batch sizes then count rows

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, Mapping) or hasattr(node, "get"):
            node = node.get(part, None)
        else:
            node = getattr(node, part, None)
        if node is None:
            return default
    return node


def _divisibility_hint(effective: int, world: int, micro: int) -> str:
    per_device = effective / world
    fixes = []
    if effective % world == 0:
        micros = [m for m in range(micro, 0, -1) if (effective // world) % m == 0]
        if micros:
            m = micros[0]
            fixes.append(f"batch.micro={m} (grad_accum {effective // (world * m)})")
    unit = world * micro
    lower, upper = (effective // unit) * unit, (effective // unit + 1) * unit
    fixes.extend(f"batch.effective={v}" for v in (lower, upper) if v > 0)
    return (f"batch.effective={effective} is not divisible by world_size {world} x batch.micro {micro} "
            f"= {unit} (that is {per_device:g} examples per device per step). Fix with one of: "
            + ", ".join(fixes))


def _check_loss_chunk(cfg: Any, method: str, strategy: str) -> None:
    chunk = _get(cfg, "model.loss_chunk_size")
    if chunk is None:
        return
    if int(chunk) < 1:
        raise ConfigError(f"model.loss_chunk_size={chunk} must be >= 1 (loss positions per chunk, e.g. 4096), or null "
                          "for the model's own head")
    if method not in ("sft", "dpo"):
        raise ConfigError(f"model.loss_chunk_size={chunk} applies to method=sft and method=dpo; method={method} "
                          "computes its own loss: set model.loss_chunk_size=null")
    if strategy == "deepspeed" and _get(cfg, "hardware.zero_stage") == 3:
        raise ConfigError(f"model.loss_chunk_size={chunk} runs the LM head's weight outside the head module, which "
                          "DeepSpeed ZeRO-3 gathers only when the module itself runs: set model.loss_chunk_size=null, "
                          "or hardware.strategy=fsdp (FSDP2 keeps the head gathered), or hardware.zero_stage=2")


def _batch_sizes(cfg: Any, world: int) -> tuple[int, int, int, int]:
    """(effective, micro, grad_accum, global_micro) of an offline method, checked."""
    effective = int(_get(cfg, "batch.effective", 1))
    if effective < 1:
        raise ConfigError(f"batch.effective={effective} must be >= 1 (examples per optimizer step over all "
                          f"devices), e.g. batch.effective={32 * world}")
    micro_given = _get(cfg, "batch.micro")
    if micro_given is None:
        max_micro = int(_get(cfg, "batch.max_micro", 32))
        if effective % world:
            raise ConfigError(f"batch.effective={effective} is not divisible by world_size {world}; use a "
                              f"multiple of {world}, e.g. batch.effective={(effective // world + 1) * world}")
        per_device = effective // world
        micro = max(m for m in range(1, min(per_device, max(1, max_micro)) + 1) if per_device % m == 0)
    else:
        micro = int(micro_given)
    if micro < 1 or effective < 1:
        raise ConfigError(f"batch.micro={micro} and batch.effective={effective} must both be >= 1")
    global_micro = world * micro
    if effective < global_micro:
        raise ConfigError(f"batch.effective={effective} is smaller than world_size {world} x batch.micro "
                          f"{micro} = {global_micro}; lower batch.micro to "
                          f"{max(1, effective // world)} or raise batch.effective to {global_micro}")
    if effective % global_micro:
        raise ConfigError(_divisibility_hint(effective, world, micro))
    grad_accum = effective // global_micro
    given = _get(cfg, "batch.grad_accum")
    if given is not None and int(given) != grad_accum:
        raise ConfigError(f"batch.grad_accum={given} disagrees with the derived grad_accum {grad_accum} "
                          f"(= batch.effective {effective} / (world_size {world} x batch.micro {micro})); "
                          "drop batch.grad_accum or change batch.effective")
    return effective, micro, grad_accum, global_micro


GRPO_UNITS = {"grpo": "completions (each its own token mean)", "dapo": "completion tokens",
              "dr_grpo": "completions x max_completion_length"}


def _generator_devices(cfg: Any, total: int, method: str, data_kind: str) -> int:
    """hardware.generator_devices: how many of the ``total`` devices only generate (Tulu 3: 1 of 8, with vLLM);
    the rest are the learners, the world size. Only 0 runs here (the learners generate with HF ``generate``):
    a separate generator needs a generation server this repository does not have, so any other count is
    refused, before anything loads, saying what runs instead."""
    gens = int(_get(cfg, "hardware.generator_devices", 0) or 0)
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
    nodes = max(1, int(_get(cfg, "hardware.nodes", 1)))
    same = (f"; for the same {learners} learners set hardware.devices_per_node={learners // nodes} "
            "hardware.generator_devices=0" if learners % nodes == 0 else "")
    raise ConfigError(f"hardware.generator_devices={gens} ({learners} learners + {gens} generators of {total} "
                      "devices) needs a generation server on the generator devices (vLLM, as Tulu 3's 8th GPU), "
                      "which hydralign does not have. Supported: hardware.generator_devices=0, where every learner "
                      f"samples its own prompts with Hugging Face generate (KV cache){same}")


def _rollout_sizes(cfg: Any, world: int) -> tuple[RolloutPlan, int, int]:
    """(the rollout hierarchy with its totals unset, micro, grad_accum) for a method of data kind prompts.
    Every division checked, both numbers named."""
    prompts = int(_get(cfg, "method.prompts_per_step", 16))
    gens = int(_get(cfg, "method.num_generations", 4))
    minis = int(_get(cfg, "method.num_mini_batches", 1))
    iters = int(_get(cfg, "method.num_iterations", 1))
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
    micro_given = _get(cfg, "batch.micro")
    if micro_given is None:
        cap = max(1, int(_get(cfg, "batch.max_micro", 32)))
        micro = max(m for m in range(1, min(local, cap) + 1) if local % m == 0)
    else:
        micro = int(micro_given)
        if micro < 1:
            raise ConfigError(f"batch.micro={micro} must be >= 1 (samples per device per forward)")
        if local % micro:
            raise ConfigError(f"the local mini-batch of {local} samples per device is not divisible by batch.micro="
                              f"{micro}; use a divisor of {local}, or batch.micro=null to derive one")
    accum = local // micro
    given = _get(cfg, "batch.grad_accum")
    if given is not None and int(given) != accum:
        raise ConfigError(f"batch.grad_accum={given} disagrees with the derived {accum} (local mini-batch {local} / "
                          f"batch.micro {micro}); drop batch.grad_accum")
    completion = _get(cfg, "method.max_completion_length") or _get(cfg, "eval.max_new_tokens", 32)
    episodes = _get(cfg, "method.total_episodes")
    rollout = RolloutPlan(
        prompts_per_rollout=prompts, generations_per_prompt=gens, samples_per_rollout=samples,
        prompts_per_device=prompts // world, num_mini_batches=minis, mini_batch_samples=mini,
        mini_batch_samples_per_device=local, micro_batch_samples_per_device=micro, grad_accum_per_mini_batch=accum,
        num_iterations=iters, steps_per_rollout=minis * iters, max_completion_length=int(completion),
        loss_type=str(_get(cfg, "method.loss_type", "dapo")),
        total_episodes=int(episodes) if episodes is not None else None, total_rollouts=None,
        episodes_per_step=samples / (minis * iters))
    return rollout, micro, accum


def _rollout_steps(cfg: Any, rollout: RolloutPlan) -> int:
    """Total optimizer steps: from method.total_episodes (whole rollout batches) or trainer.max_steps."""
    per = rollout.steps_per_rollout
    if rollout.total_episodes is not None:
        rollouts = rollout.total_episodes // rollout.samples_per_rollout
        if rollouts < 1:
            raise ConfigError(f"method.total_episodes={rollout.total_episodes} is less than one rollout batch of "
                              f"{rollout.samples_per_rollout} samples; raise it or lower method.prompts_per_step")
        return rollouts * per
    max_steps = _get(cfg, "trainer.max_steps")
    if max_steps is None or int(max_steps) < 1:
        raise ConfigError("training length is not set: give method.total_episodes=N (samples) or trainer.max_steps=N")
    if int(max_steps) % per:
        raise ConfigError(f"trainer.max_steps={max_steps} is not a multiple of the {per} optimizer steps per rollout "
                          f"batch (method.num_mini_batches x method.num_iterations); use trainer.max_steps="
                          f"{(int(max_steps) // per + 1) * per}")
    return int(max_steps)


def _checkpoint_steps(cfg: Any, method: str, rollout: Optional[RolloutPlan], eval_every: int) -> Optional[int]:
    """Optimizer steps between rolling checkpoints: checkpoint.every_n_steps, or checkpoint.every_n_episodes
    converted for an online method. An episode is one sampled completion, generated once per rollout batch, so
    a step is ``samples_per_rollout / steps_per_rollout`` episodes (the mini-batch of all devices when
    num_iterations is 1). Those steps must be whole and validated, else ``<run>:best`` could not pick them."""
    steps, episodes = _get(cfg, "checkpoint.every_n_steps"), _get(cfg, "checkpoint.every_n_episodes")
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


def make_plan(cfg: Any, num_train_examples: Optional[int] = None) -> Plan:
    """Derive and check every size. ``num_train_examples`` is the loaded train split's size; without
    it the plan uses what the config knows (synthetic task size, ``data.num_examples``)."""
    spec = get_method(_get(cfg, "method.name"))
    if spec.check:
        spec.check(cfg)
    from hydralign.models.peft_checks import check_peft

    check_peft(cfg)

    nodes = int(_get(cfg, "hardware.nodes", 1))
    devices = int(_get(cfg, "hardware.devices_per_node", 1))
    if nodes < 1 or devices < 1:
        raise ConfigError(f"hardware.nodes={nodes} and hardware.devices_per_node={devices} must both be >= 1")
    world = nodes * devices - _generator_devices(cfg, nodes * devices, spec.name, spec.data_kind)  # the learners
    accelerator = _get(cfg, "hardware.accelerator", "cpu")
    strategy = _get(cfg, "hardware.strategy", "auto")
    precision = str(_get(cfg, "hardware.precision", "32-true"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"hardware.strategy={strategy} is unknown; choose one of: {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"hardware.precision={precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    if accelerator == "cpu" and precision.startswith("16"):
        raise ConfigError(f"hardware.precision={precision} needs a GPU; on CPU use hardware.precision=32-true "
                          "or bf16-mixed")
    gpu = str(_get(cfg, "hardware.gpu", "") or "")
    if gpu.startswith("V100"):
        if precision.startswith("bf16"):
            raise ConfigError(f"hardware.gpu={gpu} has no bf16; set hardware.precision=16-mixed")
        if _get(cfg, "model.attn_implementation") == "flash_attention_2":
            raise ConfigError(f"hardware.gpu={gpu} cannot run flash-attention 2 (Ampere or newer); "
                              "set model.attn_implementation=sdpa")
    check_strategy(cfg, held_frozen=spec.held_models(cfg))  # what fsdp / deepspeed cannot run, and the fix
    _check_loss_chunk(cfg, spec.name, strategy)
    packing, row_tokens = _check_packing(cfg, spec)

    rollout: Optional[RolloutPlan] = None
    if spec.data_kind == "prompts":
        rollout, micro, grad_accum = _rollout_sizes(cfg, world)
        effective, global_micro = rollout.mini_batch_samples, world * micro
    else:
        effective, micro, grad_accum, global_micro = _batch_sizes(cfg, world)

    # Packed: the items are rows, counted once the data is tokenized and packed.
    if num_train_examples is None and packing != "packed":
        if _get(cfg, "data.source") == "arithmetic":
            num_train_examples = int(_get(cfg, "data.arithmetic.num_train"))
            check_balanced_fraction(float(_get(cfg, "data.arithmetic.balanced_fraction")))
        elif _get(cfg, "data.num_examples") is not None:
            n = int(_get(cfg, "data.num_examples"))
            num_train_examples = n - int(round(n * float(_get(cfg, "data.val_fraction", 0.0) or 0.0)))
    steps_per_epoch = None
    if rollout is not None and num_train_examples is not None:
        if num_train_examples < rollout.prompts_per_rollout:
            raise ConfigError(f"the train split has {num_train_examples} prompts, fewer than one rollout batch needs "
                              f"(method.prompts_per_step={rollout.prompts_per_rollout}); lower it or add data")
        steps_per_epoch = num_train_examples // rollout.prompts_per_rollout * rollout.steps_per_rollout
    elif num_train_examples is not None:
        if num_train_examples < effective:
            items = "packed rows" if packing == "packed" else "examples"
            raise ConfigError(f"the train split has {num_train_examples} {items}, fewer than one optimizer "
                              f"step needs (batch.effective={effective}); lower batch.effective or add data")
        steps_per_epoch = num_train_examples // effective

    max_steps = _get(cfg, "trainer.max_steps")
    max_epochs = _get(cfg, "trainer.max_epochs")
    total_steps: Optional[int] = None
    epochs: Optional[float] = None
    if max_steps is not None and int(max_steps) != -1 and int(max_steps) < 1:  # -1: Lightning's "no limit"
        raise ConfigError(f"trainer.max_steps={max_steps} must be >= 1 (optimizer steps); or set it to null "
                          "and give trainer.max_epochs=N (data passes)")
    if max_epochs is not None and float(max_epochs) != -1 and float(max_epochs) <= 0:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be > 0 (data passes); or set it to null and "
                          "give trainer.max_steps=N (optimizer steps)")
    if rollout is not None:
        total_steps = _rollout_steps(cfg, rollout)
        epochs = total_steps / steps_per_epoch if steps_per_epoch else None
        rollout = replace(rollout, total_rollouts=total_steps // rollout.steps_per_rollout)
    elif max_steps is not None and int(max_steps) > 0:
        total_steps = int(max_steps)
        epochs = total_steps / steps_per_epoch if steps_per_epoch else None
    elif max_epochs is not None and float(max_epochs) > 0:
        epochs = float(max_epochs)
        total_steps = max(1, math.ceil(epochs * steps_per_epoch)) if steps_per_epoch else None
    else:
        raise ConfigError("training length is not set: give trainer.max_steps=N (optimizer steps) or "
                          "trainer.max_epochs=N (data passes)")

    schedule = _get(cfg, "schedule.name", ScheduleConfig.name)  # one source of defaults: the schema
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule} is unknown; choose one of: {', '.join(SCHEDULES)}")
    w_steps, w_ratio = _get(cfg, "schedule.warmup_steps"), _get(cfg, "schedule.warmup_ratio")
    if w_steps is not None and w_ratio is not None and int(w_steps) > 0 and float(w_ratio) > 0:
        raise ConfigError(f"give schedule.warmup_steps ({w_steps}) or schedule.warmup_ratio ({w_ratio}), "
                          "not both: set the other to null")
    if w_ratio is not None and not 0 <= float(w_ratio) < 1:
        raise ConfigError(f"schedule.warmup_ratio={w_ratio} must be in [0, 1)")
    warmup: Optional[int]
    if w_steps is not None and int(w_steps) > 0:
        warmup = int(w_steps)
    elif w_ratio is not None and total_steps is not None:
        warmup = int(round(float(w_ratio) * total_steps))
    elif w_ratio is not None:
        warmup = None
    else:
        warmup = 0
    if warmup is not None and total_steps is not None and warmup >= total_steps:
        raise ConfigError(f"schedule.warmup_steps={warmup} is not below the run's {total_steps} total steps; "
                          f"lower it (e.g. schedule.warmup_steps={max(0, total_steps // 10)}) or use "
                          "schedule.warmup_ratio")
    if schedule == "multistep":
        ms, fs = list(_get(cfg, "schedule.milestones", [])), list(_get(cfg, "schedule.factors", []))
        if len(ms) != len(fs) or any(not 0 < m < 1 for m in ms) or ms != sorted(ms):
            raise ConfigError(f"schedule.milestones={ms} must be increasing fractions in (0, 1), one per "
                              f"schedule.factors={fs}")

    generated = ("val/exact_match", "val/exact_match_flex", "val/repetition_rate")
    if int(_get(cfg, "eval.num_generate", 1)) == 0:
        for key in ("checkpoint.monitor", "optimized_metric"):
            if _get(cfg, key) in generated:
                raise ConfigError(f"{key}={_get(cfg, key)} comes from generation, but eval.num_generate=0; "
                                  f"set {key}=val/loss or eval.num_generate > 0")
    every = int(_get(cfg, "eval.every_n_steps", 100))
    if every < 1:
        raise ConfigError(f"eval.every_n_steps={every} must be >= 1")
    max_seq_len = int(_get(cfg, "data.max_seq_len", 0))
    lr = float(_get(cfg, "optimizer.lr", _get(cfg, "lr", 0.0)))
    if not lr > 0:
        raise ConfigError(f"lr={lr} must be > 0")
    seed = int(_get(cfg, "seed", 0))
    if not 0 <= seed <= MAX_SEED:  # Lightning's seed_everything refuses others, only once training starts
        raise ConfigError(f"seed={seed} must be in [0, {MAX_SEED}]")
    optimizer = _get(cfg, "optimizer.name", OptimizerConfig.name)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={optimizer} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    ckpt_every = _checkpoint_steps(cfg, spec.name, rollout, every)
    episodes = _get(cfg, "checkpoint.every_n_episodes")  # (then ckpt_every holds its steps)
    if rollout is not None and episodes is not None:
        rollout = replace(rollout, checkpoint_every_n_episodes=int(episodes))
    # One schedule item (an example, or a packed row): its sequences and their length.
    sequences, length = (1, row_tokens) if packing == "packed" else (spec.sequences_per_example, max_seq_len)
    # A micro-batch's rows x sequences x length: padding_free makes it one row of all its tokens (its attention
    # is quadratic in them on SDPA / eager).
    rows, per_row, row_len = (1, 1, micro * sequences * length) if packing == "padding_free" else \
        (micro, sequences, length)
    inputs = memory_inputs(cfg, rows, per_row, spec.held_models(cfg), spec.name, seq_len=row_len)
    return Plan(
        method=spec.name, data_kind=spec.data_kind,
        loss_unit=GRPO_UNITS.get(rollout.loss_type, spec.unit) if rollout else spec.unit, frozen_models=spec.frozen_models(cfg),
        model=str(_get(cfg, "model.name", "?")), accelerator=accelerator, strategy=strategy,
        precision=precision, nodes=nodes, devices_per_node=devices, world_size=world, micro_batch=micro,
        grad_accum=grad_accum, global_micro_batch=global_micro, effective_batch=effective,
        max_seq_len=max_seq_len, max_tokens_per_step=effective * sequences * length,
        num_train_examples=num_train_examples, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        epochs=epochs, warmup_steps=warmup, lr=lr, schedule=schedule, eval_every_n_steps=every,
        seed=seed, num_parameters=_get(cfg, "model.num_parameters"),
        memory=estimate_memory(inputs) if inputs is not None else None, rollout=rollout,
        checkpoint_every_n_steps=ckpt_every,
        packing=packing, max_tokens_per_micro=row_tokens if packing == "packed" else None,
    )


def format_plan(plan: Plan, title: str = "plan") -> str:
    def show(v: Any) -> str:
        if v is None:
            return "known once the data is loaded"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("method / model", f"{plan.method} / {plan.model}"
                           + (f" ({plan.num_parameters:.3g} parameters)" if plan.num_parameters else "")),
        ("hardware", f"{plan.nodes} node(s) x {plan.devices_per_node} {plan.accelerator} device(s), "
                     f"strategy {plan.strategy}, precision {plan.precision}"),
        ("world_size", plan.world_size),
        ("micro_batch (per device)", plan.micro_batch),
        ("grad_accum (derived)", plan.grad_accum),
        ("effective_batch", f"{plan.effective_batch} = {plan.world_size} x {plan.micro_batch} x {plan.grad_accum}"),
        ("tokens per step (max)", _tokens_per_step(plan)),
        ("packing", PACKING_TEXT[plan.packing].format(n=plan.max_tokens_per_micro)),
        ("loss normalized by", f"{plan.loss_unit} of the whole step (data: {plan.data_kind})"),
        ("frozen models", "; ".join(plan.frozen_models) or "none"),
        ("train rows (packed)" if plan.packing == "packed" else "train examples", show(plan.num_train_examples)),
        ("steps per epoch", show(plan.steps_per_epoch)),
        ("total steps", show(plan.total_steps)),
        ("epochs", show(plan.epochs)),
        ("warmup steps", show(plan.warmup_steps)),
        ("lr / schedule", f"{plan.lr:g} / {plan.schedule}"),
        ("validate every", f"{plan.eval_every_n_steps} steps"),
        ("seed", plan.seed),
    ] + format_rollout(plan.rollout) + format_memory(plan.memory)
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"== {title} =="] + [f"  {k.ljust(width)}  {show(v)}" for k, v in rows])


PACKING_TEXT = {
    "none": "none (one right-padded row per sequence)",
    "padding_free": "padding_free (each micro-batch's sequences in one row, attention inside each)",
    "packed": "packed (rows of <= {n} tokens by best-fit decreasing; batch sizes count rows)",
}


def _tokens_per_step(plan: Plan) -> str:
    if plan.packing == "packed":
        return f"{plan.max_tokens_per_step} = {plan.effective_batch} rows x {plan.max_tokens_per_micro}"
    per_example = plan.max_tokens_per_step // max(1, plan.effective_batch * plan.max_seq_len)
    return f"{plan.max_tokens_per_step} = {plan.effective_batch} x {per_example} sequence(s) x {plan.max_seq_len}"


def _check_packing(cfg: Any, spec: Any) -> tuple[str, Optional[int]]:
    """(data.packing, tokens per packed row). Refuses a mode the method cannot use, and a row that could not
    hold the longest example (a pair: chosen + rejected)."""
    mode = str(_get(cfg, "data.packing", "none") or "none")
    if mode not in PACKING_TEXT:
        raise ConfigError(f"data.packing={mode} is unknown; choose one of: {', '.join(PACKING_TEXT)}")
    if mode != "packed" and _get(cfg, "data.max_tokens_per_micro") is not None:
        raise ConfigError(f"data.max_tokens_per_micro={_get(cfg, 'data.max_tokens_per_micro')} sizes packed rows; "
                          f"with data.packing={mode} nothing reads it: set data.packing=packed or remove it")
    if mode == "none":
        return mode, None
    if not spec.packing:
        usable = ", ".join(n for n, s in METHODS.items() if s.packing)
        raise ConfigError(f"data.packing={mode} applies to method={usable}, not method={spec.name}; "
                          "set data.packing=none")
    if mode == "padding_free":
        return mode, None
    row = _get(cfg, "data.max_tokens_per_micro")
    longest = spec.sequences_per_example * int(_get(cfg, "data.max_seq_len", 0))
    if row is None:
        raise ConfigError(f"data.packing=packed needs data.max_tokens_per_micro (tokens per row), e.g. "
                          f"data.max_tokens_per_micro={max(longest, 1)}")
    if int(row) < longest:
        what = "a chosen + rejected pair" if spec.sequences_per_example == 2 else "an example"
        raise ConfigError(f"data.max_tokens_per_micro={row} cannot hold {what} of up to {longest} tokens "
                          f"(data.max_seq_len={_get(cfg, 'data.max_seq_len')}); set data.max_tokens_per_micro>={longest}")
    return mode, int(row)


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
