"""data.packing in the plan: checked before anything loads, and what the plan prints for it."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from tests.helpers import compose_cfg


@pytest.mark.parametrize("overrides, pattern", [
    (["data.packing=tight"], r"data.packing=tight is unknown; choose one of: none, padding_free, packed"),
    (["data.packing=packed"], r"needs data.max_tokens_per_micro \(tokens per row\), e.g. data.max_tokens_per_micro=64"),
    (["data.packing=packed", "data.max_tokens_per_micro=32"],
     r"cannot hold an example of up to 64 tokens .*data.max_tokens_per_micro>=64"),
    (["method=dpo", "data.packing=packed", "data.max_tokens_per_micro=100"],
     r"cannot hold a chosen \+ rejected pair of up to 128 tokens"),
    (["method=grpo", "data.packing=padding_free"], r"applies to method=sft, dpo, orpo, not method=grpo; set data.packing=none"),
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


def test_a_row_size_without_packed_rows_is_refused():
    with pytest.raises(ConfigError, match=r"data.max_tokens_per_micro=256 sizes packed rows; with "
                                          r"data.packing=padding_free nothing reads it"):
        make_plan(compose_cfg(["data.packing=padding_free", "data.max_tokens_per_micro=256"]))


def test_padding_free_memory_counts_one_row_of_the_whole_micro_batch():
    eager = ["model.attn_implementation=eager", "batch.micro=8", "batch.effective=8"]
    padded = make_plan(compose_cfg(eager)).memory
    free = make_plan(compose_cfg(eager + ["data.packing=padding_free"])).memory
    assert free.tokens_per_micro == padded.tokens_per_micro == 8 * 64
    assert free.activations_gib > padded.activations_gib  # eager scores over 512 tokens, not 8 x 64


def test_resume_tells_packed_rows_apart_but_not_padding_free_from_padded():
    from hydralign.checkpoints.resume import compat_signature

    padded = compat_signature(compose_cfg([]))
    assert compat_signature(compose_cfg(["data.packing=padding_free"])) == padded
    packed = compat_signature(compose_cfg(["data.packing=packed", "data.max_tokens_per_micro=256"]))
    assert packed["data.packed_rows"] == 256 and padded["data.packed_rows"] is None
