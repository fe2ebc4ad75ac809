"""Strategies from the plan: the one place that turns ``hardware.*`` into Lightning's strategy.

    auto / ddp   one process, or DDP over every rank (``hardware.process_backend``: gloo on CPU, nccl on GPU).
    fsdp         FSDP2: Lightning's ``ModelParallelStrategy`` with a data-parallel mesh over every rank (no
                 tensor parallelism). The module's ``configure_model`` (``methods/base.py``) calls
                 ``shard_from_rank0`` on the policy and on each frozen model (DPO's reference): ``fully_shard``
                 per decoder layer and on the root, the mixed-precision policy from ``hardware.precision``.
                 Rank 0 builds the model on CPU; every other rank builds it on the meta device
                 (``empty_policy``); rank 0's weights are then broadcast tensor by tensor into the shards, so
                 no accelerator ever holds a whole model. Activation checkpointing is
                 ``model.gradient_checkpointing=true`` under every strategy: transformers (>= 5) checkpoints
                 each decoder layer's forward inside FSDP2's hooks, and drops the KV cache while it does.
    deepspeed    ZeRO stage 1/2/3, GPUs only: the DeepSpeed config is generated from the plan
                 (``deepspeed_config``: micro batch, clipping, precision, stage, offload), written to the run
                 folder and logged with the run. Lightning owns gradient accumulation, so the config never
                 holds ``gradient_accumulation_steps`` (Lightning sets it, and refuses a config that has it).

Combinations a strategy cannot run are refused by ``check_strategy`` (pure, called by the plan) before any
data, model or MLflow run exists. Nothing here imports torch at module level: the plan imports this file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hydralign.errors import ConfigError

DEEPSPEED_CONFIG_FILE = "deepspeed_config.json"
ZERO_STAGES = (1, 2, 3)


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node.get(part, None) if isinstance(node, Mapping) or hasattr(node, "get") \
            else getattr(node, part, None)
        if node is None:
            return default
    return node


# --- refusals (pure) -------------------------------------------------------------------------------
def check_strategy(cfg: Any, held_frozen: tuple[str, ...] = ()) -> None:
    """Refuse what ``hardware.strategy`` cannot run, naming what to set instead. ``held_frozen``: the
    frozen models the method keeps in memory while training (e.g. DPO's reference copy)."""
    strategy = _get(cfg, "hardware.strategy", "auto")
    precision = str(_get(cfg, "hardware.precision", "32-true"))
    accelerator = _get(cfg, "hardware.accelerator", "cpu")
    stage = _get(cfg, "hardware.zero_stage")
    offload_optimizer = bool(_get(cfg, "hardware.zero_offload_optimizer", False))
    offload_params = bool(_get(cfg, "hardware.zero_offload_params", False))

    if strategy != "deepspeed":
        if stage is not None:
            raise ConfigError(f"hardware.zero_stage={stage} applies to DeepSpeed only; with hardware.strategy="
                              f"{strategy} set hardware.zero_stage=null, or hardware.strategy=deepspeed")
        for key, on in (("zero_offload_optimizer", offload_optimizer), ("zero_offload_params", offload_params)):
            if on:
                raise ConfigError(f"hardware.{key}=true applies to DeepSpeed only; with hardware.strategy="
                                  f"{strategy} set hardware.{key}=false, or hardware.strategy=deepspeed")

    timeout = _get(cfg, "hardware.dist_timeout_min")
    if timeout is not None and float(timeout) <= 0:
        raise ConfigError(f"hardware.dist_timeout_min={timeout}: give the minutes a collective may wait (> 0), or "
                          "null for Lightning's 30")
    fsdp_options = {"fsdp_reshard_after_forward": True, "fsdp_accumulate_unsharded": False}
    for key, default in fsdp_options.items():
        value = bool(_get(cfg, f"hardware.{key}", default))
        if strategy != "fsdp" and value != default:
            raise ConfigError(f"hardware.{key}={str(value).lower()} applies to FSDP2 only; with hardware.strategy="
                              f"{strategy} set hardware.{key}={str(default).lower()}, or hardware.strategy=fsdp")
    if strategy == "fsdp":
        if precision == "16-mixed":
            raise ConfigError("hardware.strategy=fsdp (FSDP2) has no fp16 loss scaling: set hardware.precision="
                              "bf16-mixed (A100/H100), or keep 16-mixed with hardware.strategy=ddp or deepspeed "
                              "(V100)")
    elif strategy == "deepspeed":
        if stage not in ZERO_STAGES:
            raise ConfigError(f"hardware.strategy=deepspeed needs hardware.zero_stage=1, 2 or 3 (got {stage})")
        if accelerator != "gpu":
            raise ConfigError("hardware.strategy=deepspeed trains on CUDA GPUs only (Lightning's DeepSpeed strategy "
                              "refuses CPU); here use hardware.strategy=fsdp (FSDP2 runs on CPU with gloo) or ddp, "
                              "or add dry_run=true to print the plan only")
        if offload_params and stage != 3:
            raise ConfigError("hardware.zero_offload_params=true needs partitioned parameters, which only ZeRO-3 "
                              "has; set hardware.zero_stage=3 or hardware.zero_offload_params=false "
                              "(hardware.zero_offload_optimizer works with every stage)")
        if stage == 3 and held_frozen:
            if "teacher" in held_frozen:  # distillation
                instead = ("method.loss=seqkd (the teacher's answers generated once and cached; no teacher held "
                           "while training)")
            else:
                instead = ("method.precompute_ref=true (log-probs computed once), or peft=lora (the reference is "
                           "the policy with adapters off)")
            raise ConfigError(f"hardware.zero_stage=3 partitions the policy but not the {', '.join(held_frozen)} "
                              f"this method keeps (it would sit whole on every GPU): set {instead}, or "
                              "hardware.strategy=fsdp (shards it too), or hardware.zero_stage=2")


# --- DeepSpeed (pure) ------------------------------------------------------------------------------
def deepspeed_config(plan: Any, cfg: Any) -> dict[str, Any]:
    """The DeepSpeed config of a run, from its plan and ``hardware.*`` (the keys are DeepSpeed's own,
    https://www.deepspeed.ai/docs/config-json/). No ``gradient_accumulation_steps``: Lightning sets it from
    ``plan.grad_accum``, and DeepSpeed checks train_batch_size = micro x accumulation x world size."""
    stage = int(_get(cfg, "hardware.zero_stage"))
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": 500_000_000}
    if stage == 3:
        # hf_model/ export needs whole weights: gather the 16-bit partitions when the model is saved.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    else:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 500_000_000, "reduce_scatter": True})
    if _get(cfg, "hardware.zero_offload_optimizer", False):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if _get(cfg, "hardware.zero_offload_params", False):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "train_batch_size": plan.effective_batch,
        "gradient_clipping": float(_get(cfg, "optimizer.grad_clip", 0.0) or 0.0),
        "zero_optimization": zero,
        # The optimizer is hydralign's (optimizer.name, built in configure_optimizers), not DeepSpeed's.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,  # progress is Lightning's; DeepSpeed's own lines only add noise
        "wall_clock_breakdown": False,
    }
    if zero.get("offload_optimizer"):
        # torch's optimizer then steps on the CPU (DeepSpeedCPUAdam would be faster; it compiles an extension).
        config["zero_force_ds_cpu_optimizer"] = False
    if plan.precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif plan.precision.startswith("16"):
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    return config


def loss_multiplier(plan: Any) -> int:
    """What ``training_step`` multiplies a micro-batch's share of the window mean by, so that the step's
    gradient is d(window loss sum / window units). Lightning divides every micro-batch loss by grad_accum,
    and DDP, FSDP2 and ZeRO average gradients over the world; DeepSpeed's ``engine.backward`` divides by its
    gradient_accumulation_steps once more (``scale_wrt_gas``), so under DeepSpeed grad_accum counts twice."""
    multiplier = plan.grad_accum * plan.world_size
    return multiplier * plan.grad_accum if plan.strategy == "deepspeed" else multiplier


# --- building the strategy -------------------------------------------------------------------------
def process_group_timeout(cfg: Any) -> dict[str, Any]:
    """``timeout=`` for the strategy from ``hardware.dist_timeout_min`` (nothing when null: Lightning's 30
    minutes). A collective that waits longer fails the job (NCCL's watchdog, ``hardware.env``)."""
    minutes = _get(cfg, "hardware.dist_timeout_min")
    if minutes is None:
        return {}
    from datetime import timedelta

    return {"timeout": timedelta(minutes=float(minutes))}


def build_strategy(plan: Any, cfg: Any):
    """Lightning's strategy for the plan: "auto" for one plain process, else a strategy object."""
    backend = _get(cfg, "hardware.process_backend")
    timeout = process_group_timeout(cfg)
    if plan.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # Data parallel over every rank, no tensor parallelism; each rank saves its own shard.
        return ModelParallelStrategy(data_parallel_size=plan.world_size, tensor_parallel_size=1,
                                     save_distributed_checkpoint=True, process_group_backend=backend, **timeout)
    if plan.strategy == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=deepspeed_config(plan, cfg), process_group_backend=backend, **timeout)
    if plan.world_size == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend=backend, **timeout)


# --- FSDP2 -----------------------------------------------------------------------------------------
def mixed_precision_policy(precision: str):
    """FSDP2's policy for ``hardware.precision``: bf16/fp16 parameters in forward and backward (all-gathered
    at half the bytes), gradients reduced in fp32; the sharded master weights keep their own dtype."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision.startswith("bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision.startswith("16"):
        return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model) -> list:
    """The model's repeated blocks, by the class names Hugging Face models declare in ``_no_split_modules``
    (``LlamaDecoderLayer``, ...), also when wrapped by PEFT."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"hardware.strategy=fsdp shards per decoder layer, but {type(model).__name__} names none "
                          "(no _no_split_modules); use hardware.strategy=ddp for this model")
    return layers


def meta_copy(model):
    """A copy of ``model`` whose parameters live on the meta device (no memory); buffers are copied."""
    import copy

    import torch

    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def shard_from_rank0(model, mesh, device, precision: str, reshard_after_forward: bool = True):
    """FSDP2-shard ``model`` over ``mesh`` and fill the shards with rank 0's weights; returns the sharded
    model. On rank 0 ``model`` holds the real weights (CPU); on every other rank it is an empty skeleton of
    the same structure (meta parameters, ``empty_policy``). ``reshard_after_forward=False`` keeps each layer's
    gathered parameters until its backward (``hardware.fsdp_reshard_after_forward``). Collective."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    rank0 = dist.get_rank() == 0
    full_state = model.state_dict() if rank0 else {}
    buffers = {name: buf for name, buf in model.named_buffers()} if rank0 else {}
    shell = meta_copy(model) if rank0 else model
    policy = mixed_precision_policy(precision)
    for layer in decoder_layers(shell):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(shell, mesh=mesh, mp_policy=policy)  # the root: embeddings, final norm, head (tied or not)
    shell.to_empty(device=device)
    set_model_state_dict(shell, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():  # buffers are not sharded; non-persistent ones (rotary inv_freq) are in no state dict
        for name, buf in shell.named_buffers():
            if rank0:
                buf.copy_(buffers[name])
            dist.broadcast(buf, src=0)
    return shell


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def empty_policy(cfg: Any, tokenizer: Any):
    """The policy's skeleton for ranks other than 0 under FSDP2: the same modules (PEFT included) with
    every tensor on the meta device; ``shard_from_rank0`` gives it rank 0's weights. A pretrained model
    is built from its config alone (no weights are read)."""
    import torch

    from hydralign.models import build_model
    from hydralign.models.peft import apply_peft

    mcfg = cfg.model
    with torch.device("meta"):
        if mcfg.source == "config":
            model = build_model(mcfg, tokenizer, cfg.seed, cfg.peft)
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            from hydralign.models.policy import DTYPES

            config = AutoConfig.from_pretrained(mcfg.name_or_path, revision=mcfg.revision,
                                                trust_remote_code=mcfg.trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": DTYPES[mcfg.dtype], "trust_remote_code": mcfg.trust_remote_code}
            if mcfg.attn_implementation:
                kwargs["attn_implementation"] = mcfg.attn_implementation
            model = AutoModelForCausalLM.from_config(config, **kwargs)
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            if mcfg.gradient_checkpointing:
                getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        return apply_peft(model, cfg.peft)


def gathered_policy(model, cfg: Any, tokenizer: Any):
    """The FSDP2-sharded policy's whole weights in a plain (unsharded) CPU model, for the Hugging Face
    export: on rank 0 that model, on every other rank None. Collective: every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = empty_policy(cfg, tokenizer)  # meta tensors; the gathered ones take their place
    plain.load_state_dict(full, assign=True)
    if hasattr(plain, "tie_weights"):  # assign gave tied parameters (embeddings and head) a copy each
        plain.tie_weights()
    return plain


@contextmanager
def whole_weights(model, plan: Any, cfg: Any, tokenizer: Any) -> Iterator[Any]:
    """The policy with its whole weights, for the Hugging Face export on rank 0 (None on other ranks under
    FSDP2): FSDP2 gathers the shards into a plain CPU copy (``gathered_policy``); DeepSpeed ZeRO-3 gathers its
    partitions in place for the duration; otherwise every rank already holds them. Collective."""
    if plan.strategy == "fsdp":
        yield gathered_policy(model, cfg, tokenizer)
    elif plan.strategy == "deepspeed" and int(_get(cfg, "hardware.zero_stage", 0)) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
    else:
        yield model
