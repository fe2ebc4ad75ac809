"""The plan: every size a run derives from its config, computed once, checked, frozen.

Pure (no torch, no I/O). Downstream code reads sizes from the plan and never re-derives them.
Words follow TRL's batch glossary: *micro* = examples per device per forward, *global micro* =
micro x world size, *effective* = examples per optimizer step over all devices and accumulation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from hydralign.config.choices import OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES
from hydralign.config.read import setting
from hydralign.data.arithmetic import check_balanced_fraction  # pure: random and errors only
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec
from hydralign.methods.specs import get_method, with_flag
from hydralign.plan.batch import batch_sizes
from hydralign.plan.memory import MemoryEstimate, estimate_memory, memory_inputs
from hydralign.plan.packing import check_packing
from hydralign.plan.rollout import GRPO_UNITS, RolloutPlan, generator_devices, rollout_sizes, rollout_steps
from hydralign.plan.strategy import check_strategy

MAX_SEED = 2**32 - 1  # Lightning's seed_everything accepts [0, 2^32)






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
    memory: Optional[MemoryEstimate] = None  # per device, from the config (hydralign.plan.memory); None: size unknown
    rollout: Optional[RolloutPlan] = None  # online RL (data kind prompts): the batch hierarchy
    checkpoint_every_n_steps: Optional[int] = None  # rolling checkpoints (checkpoint.every_n_steps or _episodes)
    packing: str = "none"  # none | padding_free | packed (hydralign.data.packing)
    max_tokens_per_micro: Optional[int] = None  # packed: tokens per row; batch sizes then count rows

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)




def _check_loss_chunk(cfg: Any, spec: MethodSpec, strategy: str) -> None:
    chunk = setting(cfg, "model.loss_chunk_size")
    if chunk is None:
        return
    if int(chunk) < 1:
        raise ConfigError(f"model.loss_chunk_size={chunk} must be >= 1 (loss positions per chunk, e.g. 4096), or null "
                          "for the model's own head")
    if not spec.chunked_loss:
        usable = " and ".join(f"method={n}" for n in with_flag("chunked_loss"))
        raise ConfigError(f"model.loss_chunk_size={chunk} applies to {usable}; method={spec.name} "
                          "computes its own loss: set model.loss_chunk_size=null")
    if strategy == "deepspeed" and setting(cfg, "hardware.zero_stage") == 3:
        raise ConfigError(f"model.loss_chunk_size={chunk} runs the LM head's weight outside the head module, which "
                          "DeepSpeed ZeRO-3 gathers only when the module itself runs: set model.loss_chunk_size=null, "
                          "or hardware.strategy=fsdp (FSDP2 keeps the head gathered), or hardware.zero_stage=2")


def _checkpoint_steps(cfg: Any, method: str, rollout: Optional[RolloutPlan], eval_every: int) -> Optional[int]:
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


def make_plan(cfg: Any, num_train_examples: Optional[int] = None) -> Plan:
    """Derive and check every size. ``num_train_examples`` is the loaded train split's size; without
    it the plan uses what the config knows (synthetic task size, ``data.num_examples``)."""
    spec = get_method(setting(cfg, "method.name"))
    if spec.check:
        spec.check(cfg)
    from hydralign.models.peft_checks import check_peft

    check_peft(cfg)

    nodes = int(setting(cfg, "hardware.nodes"))
    devices = int(setting(cfg, "hardware.devices_per_node"))
    if nodes < 1 or devices < 1:
        raise ConfigError(f"hardware.nodes={nodes} and hardware.devices_per_node={devices} must both be >= 1")
    world = nodes * devices - generator_devices(cfg, nodes * devices, spec.name, spec.data_kind)  # the learners
    accelerator = setting(cfg, "hardware.accelerator")
    strategy = setting(cfg, "hardware.strategy")
    precision = str(setting(cfg, "hardware.precision"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"hardware.strategy={strategy} is unknown; choose one of: {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"hardware.precision={precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    if accelerator == "cpu" and precision.startswith("16"):
        raise ConfigError(f"hardware.precision={precision} needs a GPU; on CPU use hardware.precision=32-true "
                          "or bf16-mixed")
    gpu = str((setting(cfg, "hardware.gpu") or '') or "")
    if gpu.startswith("V100"):
        if precision.startswith("bf16"):
            raise ConfigError(f"hardware.gpu={gpu} has no bf16; set hardware.precision=16-mixed")
        if setting(cfg, "model.attn_implementation") == "flash_attention_2":
            raise ConfigError(f"hardware.gpu={gpu} cannot run flash-attention 2 (Ampere or newer); "
                              "set model.attn_implementation=sdpa")
    check_strategy(cfg, held_frozen=spec.held_models(cfg), zero3_fix=spec.zero3_fix)  # what fsdp / deepspeed cannot run, and the fix
    _check_loss_chunk(cfg, spec, strategy)
    packing, row_tokens = check_packing(cfg, spec)

    rollout: Optional[RolloutPlan] = None
    if spec.data_kind == "prompts":
        rollout, micro, grad_accum = rollout_sizes(cfg, world, spec.schema)
        effective, global_micro = rollout.mini_batch_samples, world * micro
    else:
        effective, micro, grad_accum, global_micro = batch_sizes(cfg, world)

    # Packed: the items are rows, counted once the data is tokenized and packed.
    if num_train_examples is None and packing != "packed":
        if setting(cfg, "data.source") == "arithmetic":
            num_train_examples = int(setting(cfg, "data.arithmetic.num_train"))
            check_balanced_fraction(float(setting(cfg, "data.arithmetic.balanced_fraction")))
        elif setting(cfg, "data.num_examples") is not None:
            n = int(setting(cfg, "data.num_examples"))
            num_train_examples = n - int(round(n * float(setting(cfg, "data.val_fraction") or 0.0)))
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

    max_steps = setting(cfg, "trainer.max_steps")
    max_epochs = setting(cfg, "trainer.max_epochs")
    total_steps: Optional[int] = None
    epochs: Optional[float] = None
    if max_steps is not None and int(max_steps) != -1 and int(max_steps) < 1:  # -1: Lightning's "no limit"
        raise ConfigError(f"trainer.max_steps={max_steps} must be >= 1 (optimizer steps); or set it to null "
                          "and give trainer.max_epochs=N (data passes)")
    if max_epochs is not None and float(max_epochs) != -1 and float(max_epochs) <= 0:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be > 0 (data passes); or set it to null and "
                          "give trainer.max_steps=N (optimizer steps)")
    if rollout is not None:
        total_steps = rollout_steps(cfg, rollout)
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

    schedule = setting(cfg, "schedule.name")  # one source of defaults: the schema
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule} is unknown; choose one of: {', '.join(SCHEDULES)}")
    w_steps, w_ratio = setting(cfg, "schedule.warmup_steps"), setting(cfg, "schedule.warmup_ratio")
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
        ms, fs = list(setting(cfg, "schedule.milestones")), list(setting(cfg, "schedule.factors"))
        if len(ms) != len(fs) or any(not 0 < m < 1 for m in ms) or ms != sorted(ms):
            raise ConfigError(f"schedule.milestones={ms} must be increasing fractions in (0, 1), one per "
                              f"schedule.factors={fs}")

    generated = ("val/exact_match", "val/exact_match_flex", "val/repetition_rate")
    if int(setting(cfg, "eval.num_generate")) == 0:
        for key in ("checkpoint.monitor", "optimized_metric"):
            if setting(cfg, key) in generated:
                raise ConfigError(f"{key}={setting(cfg, key)} comes from generation, but eval.num_generate=0; "
                                  f"set {key}=val/loss or eval.num_generate > 0")
    every = int(setting(cfg, "eval.every_n_steps"))
    if every < 1:
        raise ConfigError(f"eval.every_n_steps={every} must be >= 1")
    max_seq_len = int(setting(cfg, "data.max_seq_len"))
    lr = float(setting(cfg, "optimizer.lr"))
    if not lr > 0:
        raise ConfigError(f"lr={lr} must be > 0")
    seed = int(setting(cfg, "seed"))
    if not 0 <= seed <= MAX_SEED:  # Lightning's seed_everything refuses others, only once training starts
        raise ConfigError(f"seed={seed} must be in [0, {MAX_SEED}]")
    optimizer = setting(cfg, "optimizer.name")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={optimizer} is unknown; choose one of: {', '.join(OPTIMIZERS)}")
    ckpt_every = _checkpoint_steps(cfg, spec.name, rollout, every)
    episodes = setting(cfg, "checkpoint.every_n_episodes")  # (then ckpt_every holds its steps)
    if rollout is not None and episodes is not None:
        rollout = replace(rollout, checkpoint_every_n_episodes=int(episodes))
    # One schedule item (an example, or a packed row): its sequences and their length.
    sequences, length = (1, row_tokens) if packing == "packed" else (spec.sequences_per_example, max_seq_len)
    # A micro-batch's rows x sequences x length: padding_free makes it one row of all its tokens (its attention
    # is quadratic in them on SDPA / eager).
    rows, per_row, row_len = (1, 1, micro * sequences * length) if packing == "padding_free" else \
        (micro, sequences, length)
    inputs = memory_inputs(cfg, rows, per_row, spec.held_models(cfg), spec.chunked_loss, seq_len=row_len)
    return Plan(
        method=spec.name, data_kind=spec.data_kind,
        loss_unit=GRPO_UNITS.get(rollout.loss_type, spec.unit) if rollout else spec.unit, frozen_models=spec.frozen_models(cfg),
        model=str(setting(cfg, "model.name") or '?'), accelerator=accelerator, strategy=strategy,
        precision=precision, nodes=nodes, devices_per_node=devices, world_size=world, micro_batch=micro,
        grad_accum=grad_accum, global_micro_batch=global_micro, effective_batch=effective,
        max_seq_len=max_seq_len, max_tokens_per_step=effective * sequences * length,
        num_train_examples=num_train_examples, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        epochs=epochs, warmup_steps=warmup, lr=lr, schedule=schedule, eval_every_n_steps=every,
        seed=seed, num_parameters=setting(cfg, "model.num_parameters"),
        memory=estimate_memory(inputs) if inputs is not None else None, rollout=rollout,
        checkpoint_every_n_steps=ckpt_every,
        packing=packing, max_tokens_per_micro=row_tokens if packing == "packed" else None,
    )
