"""The plan's batch math and its error messages."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.plan import format_plan, make_plan
from tests.conftest import compose_cfg


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
    ],
)
def test_config_errors(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_plan_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, hydralign.plan, hydralign.hardware, hydralign.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
