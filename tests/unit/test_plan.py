"""The plan's batch math and its error messages."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from tests.helpers import compose_cfg


@pytest.mark.parametrize(
    "overrides, world, micro, accum",
    [
        (["hardware=cpu", "batch.effective=32", "batch.micro=8"], 1, 8, 4),
        (["hardware=cpu_2proc", "batch.effective=32", "batch.micro=8"], 2, 8, 2),
        (["hardware=8xA100", "batch.effective=128", "batch.micro=2"], 8, 2, 8),
        # Tulu 3 DPO: 4 nodes x 8 GPUs, micro 1, accumulation 4 -> effective 128 (not 32)
        (["hardware=4x8xA100", "batch.effective=128", "batch.micro=1"], 32, 1, 4),
        (["hardware=4x8xA100", "batch.effective=32", "batch.micro=null"], 32, 1, 1),
        (["hardware=cpu", "batch.effective=48", "batch.micro=null", "batch.max_micro=32"], 1, 24, 2),
    ],
)
def test_batch_table(overrides, world, micro, accum):
    plan = make_plan(compose_cfg(overrides))
    assert (plan.world_size, plan.micro_batch, plan.grad_accum) == (world, micro, accum)
    assert plan.effective_batch == world * micro * accum


def test_indivisible_effective_batch_names_numbers_and_fixes():
    with pytest.raises(ConfigError) as err:
        make_plan(compose_cfg(["hardware=4x8xA100", "batch.effective=128", "batch.micro=3"]))
    msg = str(err.value)
    assert "batch.effective=128 is not divisible by world_size 32 x batch.micro 3 = 96" in msg
    assert "batch.micro=2 (grad_accum 2)" in msg and "batch.effective=96" in msg and "batch.effective=192" in msg


def test_effective_smaller_than_one_global_micro_batch():
    with pytest.raises(ConfigError, match=r"batch.effective=16 is smaller than world_size 8 x batch.micro 4"):
        make_plan(compose_cfg(["hardware=8xA100", "batch.effective=16", "batch.micro=4"]))


def test_explicit_grad_accum_must_agree():
    make_plan(compose_cfg(["batch.effective=32", "batch.micro=8", "batch.grad_accum=4"]))
    with pytest.raises(ConfigError, match=r"batch.grad_accum=2 disagrees with the derived grad_accum 4"):
        make_plan(compose_cfg(["batch.effective=32", "batch.micro=8", "batch.grad_accum=2"]))


def test_steps_from_epochs_and_warmup_ratio():
    plan = make_plan(compose_cfg(["trainer.max_steps=null", "trainer.max_epochs=2", "batch.effective=64",
                                  "data.arithmetic.num_train=1000", "schedule=linear",
                                  "schedule.warmup_ratio=0.1"]))
    assert plan.steps_per_epoch == 15  # floor(1000 / 64): the incomplete last step is dropped
    assert plan.total_steps == 30 and plan.warmup_steps == 3 and plan.epochs == 2


def test_loaded_size_overrides_config_size():
    plan = make_plan(compose_cfg(["trainer.max_steps=null", "trainer.max_epochs=1"]), num_train_examples=320)
    assert plan.steps_per_epoch == 10 and plan.total_steps == 10


def test_unknown_size_leaves_steps_open():
    cfg = compose_cfg(["data=jsonl", "data.train_files=[/x.jsonl]", "trainer.max_steps=null",
                       "+trainer.max_epochs=3"])
    plan = make_plan(cfg)
    assert plan.total_steps is None and "known once the data is loaded" in format_plan(plan)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["schedule.warmup_steps=5", "schedule.warmup_ratio=0.1"], "not both"),
        (["trainer.max_steps=10", "schedule.warmup_steps=10", "schedule.warmup_ratio=null"], "not below"),
        (["trainer.max_steps=null"], "trainer.max_steps=N"),
        (["hardware=1xV100", "hardware.precision=bf16-mixed"], "has no bf16"),
        (["hardware=cpu", "hardware.precision=16-mixed"], "needs a GPU"),
        (["data.arithmetic.num_train=10"], "fewer than one optimizer step"),
        (["lr=0"], "must be > 0"),
        (["eval.num_generate=0"], "checkpoint.monitor=val/exact_match comes from generation"),
        (["schedule=multistep", "schedule.milestones=[0.9,0.8]", "schedule.warmup_steps=0"], "increasing"),
        # values a new user tries: each names the key and the valid range
        (["batch.effective=0"], r"batch.effective=0 must be >= 1 \(examples per optimizer step"),
        (["batch.effective=0", "batch.micro=2"], "batch.effective=0 must be >= 1"),
        (["trainer.max_steps=0"], r"trainer.max_steps=0 must be >= 1 \(optimizer steps\); or set it to null"),
        (["trainer.max_steps=null", "trainer.max_epochs=0"], "trainer.max_epochs=0 must be > 0"),
        (["seed=-1"], r"seed=-1 must be in \[0, 4294967295\]"),
        (["seed=4294967296"], "must be in"),
        (["optimizer.name=lion"], "optimizer.name=lion is unknown; choose one of: adamw, adamw_fused, sgd, adafactor"),
    ],
)
def test_config_errors(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_plan_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, hydralign.plan.core, hydralign.distributed.machine, hydralign.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_schedule_default_has_one_source():
    """A config without a schedule gets the schema's default, the same one conf/config.yaml picks."""
    from omegaconf import OmegaConf

    from hydralign.config.schema import ScheduleConfig

    cfg = OmegaConf.to_container(compose_cfg([]), resolve=True)
    assert cfg["schedule"].pop("name") == ScheduleConfig.name
    assert make_plan(cfg).schedule == ScheduleConfig.name


def test_model_size_is_printed_when_the_card_states_it():
    assert "deepseek_llm_7b (6.9e+09 parameters)" in format_plan(make_plan(compose_cfg(["experiment=deepseek_llm_7b_sft"])))


def test_arithmetic_balanced_fraction_out_of_range_is_refused_in_the_plan():
    with pytest.raises(ConfigError, match=r"data.arithmetic.balanced_fraction=1.5 must be in \[0, 1\]"):
        make_plan(compose_cfg(["data.arithmetic.balanced_fraction=1.5"]))
