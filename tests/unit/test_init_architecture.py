"""init_from refuses weights saved for another head split: 4 heads of 32 and 8 heads of 16 have the same
tensors, so loading would run and compute something else."""

from __future__ import annotations

import pytest

from hydralign.checkpoints.saving import export_hf
from hydralign.data.chat import template_for
from hydralign.errors import ConfigError
from hydralign.models import build_model, build_tokenizer
from hydralign.models.policy import load_weights
from tests.helpers import tiny_cfg


def _model(tmp_path, heads):
    cfg = tiny_cfg(tmp_path, [f"model.num_heads={heads}"])
    template = template_for(cfg.model.chat_template)
    tok = build_tokenizer(cfg.model, template)
    return build_model(cfg.model, tok, 0), tok, template


def test_another_head_split_is_refused_naming_the_override(tmp_path):
    four, tok, template = _model(tmp_path, 4)
    saved = export_hf(four, tok, tmp_path / "hf4", tok.convert_tokens_to_ids(template.stop_tokens(tok.eos_token)))
    eight, _, _ = _model(tmp_path, 8)
    assert [p.shape for p in eight.parameters()] == [p.shape for p in four.parameters()]  # same tensors
    with pytest.raises(ConfigError, match="saved with num_attention_heads=4, this model has 8.*set model.num_heads=4"):
        load_weights(eight, str(saved))
    again, _, _ = _model(tmp_path, 4)
    load_weights(again, str(saved))
    assert all((a == b).all() for a, b in zip(again.parameters(), four.parameters()))
