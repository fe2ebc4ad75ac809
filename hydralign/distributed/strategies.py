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
    deepspeed    ZeRO stage 1/2/3, on GPUs or CPU processes (``distributed.deepspeed_cpu``: Lightning's strategy, which
                 refuses CPU, with that refusal lifted): the DeepSpeed config is generated from the plan
                 (``deepspeed_config``: micro batch, clipping, precision, stage, offload), written to the run
                 folder and logged with the run. Lightning owns gradient accumulation, so the config never
                 holds ``gradient_accumulation_steps`` (Lightning sets it, and refuses a config that has it).

Combinations a strategy cannot run are refused by ``check_strategy`` (pure, called by the plan) before any
data, model or MLflow run exists. Nothing here imports torch at module level: the plan imports this file.
"""

from __future__ import annotations

from typing import Any

from hydralign.config.read import setting

DEEPSPEED_CONFIG_FILE = "deepspeed_config.json"




# --- DeepSpeed (pure) ------------------------------------------------------------------------------
def deepspeed_config(plan: Any, cfg: Any) -> dict[str, Any]:
    """The DeepSpeed config of a run, from its plan and ``hardware.*`` (the keys are DeepSpeed's own,
    https://www.deepspeed.ai/docs/config-json/). No ``gradient_accumulation_steps``: Lightning sets it from
    ``plan.grad_accum``, and DeepSpeed checks train_batch_size = micro x accumulation x world size."""
    stage = int(setting(cfg, "hardware.zero_stage"))
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": 500_000_000}
    if stage == 3:
        # hf_model/ export needs whole weights: gather the 16-bit partitions when the model is saved.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    else:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 500_000_000, "reduce_scatter": True})
    if setting(cfg, "hardware.zero_offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if setting(cfg, "hardware.zero_offload_params"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "train_batch_size": plan.effective_batch,
        "gradient_clipping": float(setting(cfg, "optimizer.grad_clip") or 0.0),
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
    minutes = setting(cfg, "hardware.dist_timeout_min")
    if minutes is None:
        return {}
    from datetime import timedelta

    return {"timeout": timedelta(minutes=float(minutes))}


def build_strategy(plan: Any, cfg: Any):
    """Lightning's strategy for the plan: "auto" for one plain process, else a strategy object."""
    backend = setting(cfg, "hardware.process_backend")
    timeout = process_group_timeout(cfg)
    if plan.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # Data parallel over every rank, no tensor parallelism; each rank saves its own shard.
        return ModelParallelStrategy(data_parallel_size=plan.world_size, tensor_parallel_size=1,
                                     save_distributed_checkpoint=True, process_group_backend=backend, **timeout)
    if plan.strategy == "deepspeed":
        if cfg.hardware.accelerator == "cpu":
            import os

            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read by DeepSpeed when it is imported
        from hydralign.distributed.deepspeed_cpu import deepspeed_strategy

        return deepspeed_strategy(cfg.hardware.accelerator, config=deepspeed_config(plan, cfg),
                                  process_group_backend=backend, **timeout)
    if plan.world_size == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend=backend, **timeout)
