"""The plan: every size a run derives from its config, computed once, checked, frozen.

Pure (no torch, no I/O). Downstream code reads sizes from the plan and never re-derives them.
Words follow TRL's batch glossary: *micro* = examples per device per forward, *global micro* =
micro x world size, *effective* = examples per optimizer step over all devices and accumulation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec
from hydralign.methods.specs import get_method, with_flag
from hydralign.models.peft_checks import check_peft
from hydralign.plan.batch import batch_sizes
from hydralign.plan.hardware import check_hardware
from hydralign.plan.harness import check_harness
from hydralign.plan.length import (
    check_schedule,
    check_training,
    checkpoint_steps,
    config_train_count,
    steps_per_epoch_of,
    training_length,
    warmup_steps,
)
from hydralign.plan.memory import MemoryEstimate, estimate_memory, memory_inputs
from hydralign.plan.memory_colocated import colocated_inputs, estimate_colocated
from hydralign.plan.memory_evaluation import estimate_with_evaluation
from hydralign.plan.mixture import MixtureSource, check_mixture
from hydralign.plan.packing import check_packing
from hydralign.plan.rollout import GRPO_UNITS, RolloutPlan, generator_devices, learner_nodes, rollout_sizes
from hydralign.plan.strategy import check_strategy


@dataclass(frozen=True)
class Plan:
    method: str
    data_kind: str  # sft | preference | prompts | unpaired (hydralign.data.kinds)
    loss_unit: str  # a step's loss is its sum over these, divided once by their count: tokens | pairs | sequences | completions
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
    harness_every: str = "none"  # lm-eval during training: none | end | checkpoint | validation (plan.harness)
    harness_tasks: tuple[str, ...] = ()  # its lm-eval task or group names
    mixture: tuple[MixtureSource, ...] = ()  # data.mixture, source by source (plan.mixture)

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
        names = [f"method={n}" for n in with_flag("chunked_loss")]
        usable = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ConfigError(f"model.loss_chunk_size={chunk} applies to {usable}; method={spec.name} "
                          "computes its own loss: set model.loss_chunk_size=null")
    if strategy == "deepspeed" and setting(cfg, "hardware.zero_stage") == 3:
        raise ConfigError(f"model.loss_chunk_size={chunk} runs the LM head's weight outside the head module, which "
                          "DeepSpeed ZeRO-3 gathers only when the module itself runs: set model.loss_chunk_size=null, "
                          "or hardware.strategy=fsdp (FSDP2 keeps the head gathered), or hardware.zero_stage=2")


def make_plan(cfg: Any, num_train_examples: Optional[int] = None) -> Plan:
    """Derive and check every size. ``num_train_examples`` is the loaded train split's size; without it the plan
    uses what the config knows (synthetic task size, ``data.num_examples``); ``refine`` adds it later."""
    base = _config_plan(cfg)
    if num_train_examples is None:
        num_train_examples = config_train_count(cfg, base.packing, get_method(base.method).examples_per_record)
    return refine(base, cfg, num_train_examples)


def refine(plan: Plan, cfg: Any, num_train_examples: Optional[int]) -> Plan:
    """The plan once the train split's size is known (pure, no new check of what the config alone decides): steps
    per epoch, epochs, total steps from ``trainer.max_epochs``, warmup from a ratio, rollout batches."""
    steps_per_epoch = steps_per_epoch_of(num_train_examples, plan.effective_batch, plan.rollout, plan.packing)
    total_steps, epochs = training_length(cfg, plan.rollout, steps_per_epoch)
    rollout = plan.rollout
    if rollout is not None and total_steps is not None:
        rollout = replace(rollout, total_rollouts=total_steps // rollout.steps_per_rollout)
    return replace(plan, num_train_examples=num_train_examples, steps_per_epoch=steps_per_epoch,
                   total_steps=total_steps, epochs=epochs, warmup_steps=warmup_steps(cfg, total_steps), rollout=rollout)


def _config_plan(cfg: Any) -> Plan:
    """Everything the config alone decides, checked; the sizes that need the train split's count left unset."""
    spec = get_method(setting(cfg, "method.name"))
    if spec.check:
        spec.check(cfg)
    check_peft(cfg)
    nodes, devices, accelerator, strategy, precision = check_hardware(cfg)
    world = nodes * devices - generator_devices(cfg, nodes * devices, spec.name, spec.data_kind)  # the learners
    check_strategy(cfg, held_frozen=spec.held_models(cfg), zero3_fix=spec.zero3_fix)  # what fsdp / deepspeed cannot run
    _check_loss_chunk(cfg, spec, strategy)
    packing, row_tokens = check_packing(cfg, spec)
    harness_every = check_harness(cfg)
    mixture = check_mixture(cfg)
    rollout: Optional[RolloutPlan] = None
    if spec.data_kind == "prompts":
        rollout, micro, grad_accum = rollout_sizes(cfg, world, spec.schema)
        effective, global_micro = rollout.mini_batch_samples, world * micro
    else:
        effective, micro, grad_accum, global_micro = batch_sizes(cfg, world)
    training_length(cfg, rollout, None)  # refuses a missing or bad length now
    schedule = check_schedule(cfg)
    every, lr, seed = check_training(cfg)
    ckpt_every = checkpoint_steps(cfg, spec.name, rollout, every)
    episodes = setting(cfg, "checkpoint.every_n_episodes")  # (then ckpt_every holds its steps)
    if rollout is not None and episodes is not None:
        rollout = replace(rollout, checkpoint_every_n_episodes=int(episodes))
    max_seq_len = int(setting(cfg, "data.max_seq_len"))
    # One schedule item (an example, or a packed row): its sequences and their length.
    sequences, length = (1, row_tokens) if packing == "packed" else (spec.sequences_per_example, max_seq_len)
    return Plan(
        method=spec.name, data_kind=spec.data_kind,
        loss_unit=GRPO_UNITS.get(rollout.loss_type, spec.unit) if rollout else spec.unit,
        frozen_models=spec.frozen_models(cfg), model=str(setting(cfg, "model.name") or "?"), accelerator=accelerator,
        strategy=strategy, precision=precision, nodes=(lnodes := learner_nodes(nodes, devices, nodes * devices - world)),
        devices_per_node=world // lnodes, world_size=world,
        micro_batch=micro, grad_accum=grad_accum, global_micro_batch=global_micro, effective_batch=effective,
        max_seq_len=max_seq_len, max_tokens_per_step=effective * sequences * length, num_train_examples=None,
        steps_per_epoch=None, total_steps=None, epochs=None, warmup_steps=None, lr=lr, schedule=schedule,
        eval_every_n_steps=every, seed=seed, num_parameters=setting(cfg, "model.num_parameters"),
        memory=_memory(cfg, spec, packing, micro, sequences, length, rollout), rollout=rollout,
        checkpoint_every_n_steps=ckpt_every, packing=packing,
        max_tokens_per_micro=row_tokens if packing == "packed" else None,
        harness_every=harness_every, harness_tasks=tuple(setting(cfg, "eval.harness.tasks") or ()), mixture=mixture,
    )


def _memory(cfg: Any, spec: MethodSpec, packing: str, micro: int, sequences: int, length: int,
            rollout: Optional[RolloutPlan]) -> Optional[MemoryEstimate]:
    """A micro-batch's rows x sequences x length: padding_free makes it one row of all its tokens (its attention is
    quadratic in them on SDPA / eager). The learners' own vLLM engines are counted too (plan.memory_colocated)."""
    rows, per_row, row_len = (1, 1, micro * sequences * length) if packing == "padding_free" else \
        (micro, sequences, length)
    inputs = memory_inputs(cfg, rows, per_row, spec.held_models(cfg), spec.chunked_loss, seq_len=row_len)
    if inputs is None:
        return None
    colocated = colocated_inputs(cfg, rollout)
    if colocated is not None:
        return estimate_colocated(inputs, colocated)
    return estimate_memory(inputs, pieces=estimate_with_evaluation)
