"""method=distill before anything runs: its plan-time checks (pure), what the plan says it holds, and the
tokenizer comparison that refuses a teacher whose vocabulary is not the student's."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from tests.helpers import compose_cfg

TEACHER = "method.teacher_from=/some/run:best"


@pytest.mark.parametrize("overrides, message", [
    ([], "needs method.teacher_from"),
    ([TEACHER, "method.loss=kl"], "method.loss=kl is unknown"),
    ([TEACHER, "method.temperature=0"], "must be > 0"),
    ([TEACHER, "method.loss=minillm", "method.temperature=2.0"], "set method.temperature=1.0"),
    ([TEACHER, "method.loss=seqkd", "method.temperature=0.5"], "set method.temperature=1.0"),
    ([TEACHER, "method.loss=jsd", "method.jsd_beta=1.5"], r"jsd_beta=1.5 must be in \[0, 1\]"),
    ([TEACHER, "method.sft_weight=-1"], "must be >= 0"),
    ([TEACHER, "method.loss=minillm", "method.teacher_mix=1.0"], r"must be in \[0, 1\)"),
    ([TEACHER, "method.teacher_mix=0.2"], "set method.teacher_mix=0.0, or method.loss=minillm"),
    ([TEACHER, "method.loss=seqkd", "method.max_new_tokens=0"], "must be >= 1"),
    ([TEACHER, "method.loss=minillm", "method.completion_only=false"], "set method.completion_only=true"),
])
def test_refusals_name_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_plan(compose_cfg(["method=distill"] + overrides))


@pytest.mark.parametrize("loss, held", [("forward_kl", ("teacher",)), ("reverse_kl", ("teacher",)),
                                        ("jsd", ("teacher",)), ("minillm", ("teacher",)), ("seqkd", ())])
def test_every_loss_plans_and_says_what_it_holds(loss, held):
    from hydralign.methods.specs import get_method

    extra = ["method.teacher_mix=0.2"] if loss == "minillm" else []
    cfg = compose_cfg(["method=distill", TEACHER, f"method.loss={loss}"] + extra)
    plan = make_plan(cfg)
    assert plan.method == "distill" and plan.loss_unit == "tokens" and plan.data_kind == "sft"
    assert get_method("distill").held_models(cfg) == held
    assert "/some/run:best" in plan.frozen_models[0]
    if loss == "seqkd":
        assert "cached on disk" in plan.frozen_models[0]


def test_zero3_refuses_a_held_teacher_but_not_seqkd():
    ds = ["hardware=8xA100", "hardware.strategy=deepspeed", "hardware.zero_stage=3"]
    with pytest.raises(ConfigError, match="teacher"):
        make_plan(compose_cfg(["method=distill", TEACHER] + ds))
    make_plan(compose_cfg(["method=distill", TEACHER, "method.loss=seqkd"] + ds))


def test_tokenizer_differences():
    from hydralign.methods.distill import tokenizer_differences
    from hydralign.models import char_tokenizer

    assert tokenizer_differences(char_tokenizer(), char_tokenizer()) == []
    other = char_tokenizer()
    other.add_tokens(["<|tool|>"], special_tokens=True)
    diffs = tokenizer_differences(char_tokenizer(), other)
    assert any("only the teacher ['<|tool|>']" in d for d in diffs), diffs
    renamed = char_tokenizer()
    renamed.eos_token = "<|im_end|>"
    assert any(d.startswith("eos_token '</s>' (student) vs '<|im_end|>' (teacher)") for d in
               tokenizer_differences(char_tokenizer(), renamed))


def test_a_saved_copy_of_the_student_tokenizer_matches_and_another_eos_does_not(tmp_path):
    """The tokenizer frozen_models rebuilds is the one hydralign.run.build builds; saved and reloaded it is identical."""
    from hydralign.methods.distill import check_shared_tokenizer, student_tokenizer

    cfg = compose_cfg(["method=distill", TEACHER])
    tok = student_tokenizer(cfg)
    tok.save_pretrained(str(tmp_path))
    check_shared_tokenizer(tok, tmp_path, "x")  # no error
    (tmp_path / "tokenizer_config.json").write_text(
        (tmp_path / "tokenizer_config.json").read_text().replace('"eos_token": "</s>"', '"eos_token": "<unk>"'))
    with pytest.raises(ConfigError, match="eos_token"):
        check_shared_tokenizer(tok, tmp_path, "x")
