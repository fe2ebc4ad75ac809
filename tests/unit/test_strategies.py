"""Strategies from the plan: what each strategy refuses (before any run exists), the DeepSpeed config
generated for each ZeRO stage, and the Lightning strategy object each plan builds."""

from __future__ import annotations

import pytest

from hydralign.distributed.strategies import build_strategy, deepspeed_config, loss_multiplier
from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from tests.helpers import compose_cfg, tiny_cfg

DS = ["hardware=8xA100", "hardware.strategy=deepspeed"]


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (DS, r"needs hardware.zero_stage=1, 2 or 3 \(got None\)"),
        (DS + ["hardware.zero_stage=4"], r"needs hardware.zero_stage=1, 2 or 3 \(got 4\)"),
        (["hardware=8xA100", "hardware.zero_stage=2"], r"zero_stage=2 applies to DeepSpeed only; .*zero_stage=null"),
        (["hardware=8xA100", "hardware.zero_offload_optimizer=true"],
         "hardware.zero_offload_optimizer=true applies to DeepSpeed only"),
        (DS + ["hardware.zero_stage=2", "hardware.zero_offload_params=true"],
         "only ZeRO-3 has; set hardware.zero_stage=3 or hardware.zero_offload_params=false"),
        (["hardware=cpu_2proc", "hardware.fsdp_accumulate_unsharded=true"],
         "applies to FSDP2 only; with hardware.strategy=ddp set hardware.fsdp_accumulate_unsharded=false"),
        (DS + ["hardware.zero_stage=2", "hardware.fsdp_reshard_after_forward=false"],
         "hardware.fsdp_reshard_after_forward=false applies to FSDP2 only"),
        (["hardware=8xA100", "hardware.precision=16-mixed"],
         r"fsdp \(FSDP2\) has no fp16 loss scaling: set hardware.precision=bf16-mixed"),
        (["method=dpo"] + DS + ["hardware.zero_stage=3"],
         r"partitions the policy but not the reference this method keeps .* method.precompute_ref=true"),
        (["method=distill", "method.teacher_from=/runs/teacher:best"] + DS + ["hardware.zero_stage=3"],
         r"partitions the policy but not the teacher this method keeps .*: set method.loss=seqkd"),
        # GRPO's reference (beta > 0): its own fixes, never method.precompute_ref, a key GRPO does not have
        (["method=grpo", "method.beta=0.04"] + DS + ["hardware.zero_stage=3"],
         r"not the reference this method keeps .*: set peft=lora \(the reference is the policy with adapters off\), "
         r"or method.beta=0 \(no reference\), or hardware.strategy=fsdp"),
        (["method=kto"] + DS + ["hardware.zero_stage=3"],
         r"not the reference this method keeps .*: set method.precompute_ref=true"),
    ],
)
def test_refusals_name_the_fix(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["hardware=cpu_2proc", "hardware.strategy=fsdp"],
        ["hardware=cpu", "hardware.strategy=fsdp"],  # FSDP2 on one process: its mixed precision, no sharding
        ["hardware=8xA100", "hardware.precision=bf16-true"],
        ["method=dpo", "hardware=8xA100"],  # FSDP2 shards the reference too
        DS + ["hardware.zero_stage=3", "hardware.zero_offload_optimizer=true", "hardware.zero_offload_params=true"],
        ["hardware=1xV100", "hardware.strategy=deepspeed", "hardware.zero_stage=2"],  # fp16 with DeepSpeed's scaler
        # DPO under ZeRO-3 without a reference copy: precomputed log-probs, or adapters off (LoRA)
        ["method=dpo", "method.precompute_ref=true"] + DS + ["hardware.zero_stage=3"],
        ["method=dpo", "peft=lora"] + DS + ["hardware.zero_stage=3"],
        ["method=dpo"] + DS + ["hardware.zero_stage=2"],
    ],
)
def test_supported_combinations_plan(overrides):
    make_plan(compose_cfg(overrides))


def test_refused_before_any_run_exists(tmp_path):
    from hydralign.run.job import run

    cfg = tiny_cfg(tmp_path, ["hardware=cpu", "hardware.strategy=deepspeed", "hardware.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"needs hardware.zero_stage=1, 2 or 3 \(got 4\)"):
        run(cfg)
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


def _ds_plan(stage: int, extra: tuple[str, ...] = ()):
    cfg = compose_cfg(["hardware=1xA100", "hardware.strategy=deepspeed", f"hardware.zero_stage={stage}",
                       "batch.effective=32", "batch.micro=4", "optimizer.grad_clip=0.5", *extra])
    return make_plan(cfg), cfg


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_config_for_each_stage(stage):
    plan, cfg = _ds_plan(stage)
    config = deepspeed_config(plan, cfg)
    assert "gradient_accumulation_steps" not in config  # Lightning sets it, and raises if the config has it
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["train_batch_size"] == 32
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": True} and "fp16" not in config
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and "offload_optimizer" not in zero and "offload_param" not in zero
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)


def test_deepspeed_config_offload_and_fp16():
    plan, cfg = _ds_plan(3, ("hardware.zero_offload_optimizer=true", "hardware.zero_offload_params=true",
                             "hardware.precision=16-mixed", "optimizer.grad_clip=null"))
    config = deepspeed_config(plan, cfg)
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert config["zero_force_ds_cpu_optimizer"] is False  # hydralign's torch optimizer steps on the CPU
    assert config["fp16"]["enabled"] and config["fp16"]["loss_scale"] == 0 and "bf16" not in config
    assert config["gradient_clipping"] == 0.0


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_accepts_the_config(stage):
    """DeepSpeed's own validation (pydantic: an unknown key fails) and its batch arithmetic: with one
    process it derives the same accumulation as the plan from train_batch_size / micro."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    plan, cfg = _ds_plan(stage, ("hardware.zero_offload_optimizer=true",))
    parsed = DeepSpeedConfig(deepspeed_config(plan, cfg))
    assert parsed.gradient_accumulation_steps == plan.grad_accum == 8
    assert parsed.zero_optimization_stage == stage and parsed.gradient_clipping == 0.5


def test_build_strategy_per_plan():
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    assert build_strategy(make_plan(compose_cfg(["hardware=cpu"])), compose_cfg(["hardware=cpu"])) == "auto"
    cfg = compose_cfg(["hardware=cpu_2proc"])
    assert isinstance(build_strategy(make_plan(cfg), cfg), DDPStrategy)
    cfg = compose_cfg(["hardware=8xA100"])
    fsdp = build_strategy(make_plan(cfg), cfg)
    assert isinstance(fsdp, ModelParallelStrategy)
    assert (fsdp._data_parallel_size, fsdp._tensor_parallel_size) == (8, 1)  # FSDP2 over all ranks, no TP
    cfg = compose_cfg(["hardware=cpu", "hardware.strategy=fsdp"])
    assert isinstance(build_strategy(make_plan(cfg), cfg), ModelParallelStrategy)


def test_build_deepspeed_strategy_carries_the_generated_config():
    pytest.importorskip("deepspeed")
    plan, cfg = _ds_plan(2)
    strategy = build_strategy(plan, cfg)
    assert strategy.config == deepspeed_config(plan, cfg)


def test_loss_multiplier_undoes_every_division():
    plan, _ = _ds_plan(2)  # world 1, accumulation 8
    assert loss_multiplier(plan) == 8 * 8  # Lightning and DeepSpeed each divide by the accumulation
    fsdp = make_plan(compose_cfg(["hardware=8xA100", "batch.effective=128", "batch.micro=2"]))
    assert loss_multiplier(fsdp) == fsdp.grad_accum * 8


def test_fsdp_ranks_wait_for_rank_zeros_reference_logps():
    """Under FSDP2 only rank 0 holds real weights: the other ranks retry the cache until it is written."""
    from hydralign.run.reference_logps import wait_for_rank_zero as _wait_for_rank_zero

    attempts = []

    def load(compute):
        attempts.append(1)
        return compute() if len(attempts) < 3 else {"train": "written by rank 0"}

    assert _wait_for_rank_zero(load) == {"train": "written by rank 0"} and len(attempts) == 3
    with pytest.raises(TimeoutError, match="rank 0 wrote no reference log-probs"):
        _wait_for_rank_zero(lambda compute: compute(), timeout_s=0.0)
