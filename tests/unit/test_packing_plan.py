"""data.packing in the plan: checked before anything loads, and what the plan prints for it."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.plan import format_plan, make_plan
from tests.helpers import compose_cfg


@pytest.mark.parametrize("overrides, pattern", [
    (["data.packing=tight"], r"data.packing=tight is unknown; choose one of: none, padding_free, packed"),
    (["data.packing=packed"], r"needs data.max_tokens_per_micro \(tokens per row\), e.g. data.max_tokens_per_micro=64"),
    (["data.packing=packed", "data.max_tokens_per_micro=32"],
     r"cannot hold an example of up to 64 tokens .*data.max_tokens_per_micro>=64"),
    (["method=dpo", "data.packing=packed", "data.max_tokens_per_micro=100"],
     r"cannot hold a chosen \+ rejected pair of up to 128 tokens"),
    (["method=grpo", "data.packing=padding_free"], r"applies to method=sft, dpo, not method=grpo; set data.packing=none"),
])
def test_packing_refusals(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_packed_batches_count_rows_of_the_row_size():
    plan = make_plan(compose_cfg(["data.packing=packed", "data.max_tokens_per_micro=256", "batch.micro=4",
                                  "batch.effective=32"]))
    assert plan.num_train_examples is None and plan.steps_per_epoch is None  # rows: counted after packing
    assert plan.max_tokens_per_step == 32 * 256 and plan.max_tokens_per_micro == 256
    assert plan.memory.tokens_per_micro == 4 * 256
    text = format_plan(plan)
    assert "tokens per step (max)     8192 = 32 rows x 256" in text
    assert "train rows (packed)" in text
    loaded = make_plan(compose_cfg(["data.packing=packed", "data.max_tokens_per_micro=256",
                                    "batch.effective=32"]), num_train_examples=100)
    assert loaded.steps_per_epoch == 3  # 100 rows // 32


def test_padding_free_keeps_examples_as_the_unit():
    plan = make_plan(compose_cfg(["data.packing=padding_free"]))
    assert plan.packing == "padding_free" and plan.num_train_examples == 20000
    assert "padding_free (each micro-batch's sequences in one row" in format_plan(plan)
