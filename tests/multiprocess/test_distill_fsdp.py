"""Distillation under FSDP2 with 2 CPU processes: the teacher is sharded like the policy (rank 0 loads it,
the other rank builds a meta skeleton that receives the shards), and the run matches one plain process step
by step: token-level KD, and MiniLLM, whose samples are drawn per example with every rank joining every
generation forward of the sharded student and teacher."""

from __future__ import annotations

import pytest

from tests.multiprocess.test_fsdp_cpu import _assert_same_curves, _curve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from hydralign.checkpoints.saving import export_hf
    from hydralign.data.chat import template_for
    from hydralign.models import build_model, build_tokenizer
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["model.hidden_size=64", "model.num_layers=2"])
    template = template_for(cfg.model.chat_template)
    tok = build_tokenizer(cfg.model, template)
    out = tmp_path_factory.mktemp("teacher") / "hf_model"
    return export_hf(build_model(cfg.model, tok, seed=7), tok, out,
                     tok.convert_tokens_to_ids(template.stop_tokens(tok.eos_token)))


@pytest.mark.parametrize("loss", ["forward_kl", "minillm"])
def test_fsdp2_shards_the_teacher_and_matches_one_process(tmp_path, teacher, loss):
    distill = ["method=distill", f"method.teacher_from={teacher}", f"method.loss={loss}", "lr=3e-3",
               "checkpoint.monitor=val/loss", "checkpoint.mode=min", "optimized_metric=val/loss"]
    if loss == "minillm":
        distill += ["method.teacher_mix=0.2", "method.sft_weight=0.5", "method.max_new_tokens=6"]
    sharded = _curve(tmp_path, "fsdp", 2, distill)
    single = _curve(tmp_path, "single", 1, distill)
    assert sharded["sharded"] == ["model", "teacher"] and single["sharded"] == []
    _assert_same_curves(sharded, single)
