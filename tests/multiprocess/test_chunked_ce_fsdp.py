"""model.loss_chunk_size under FSDP2 on 2 CPU processes: the model's own forward gathers the root's weights (the
head replaced by an identity for it), the chunked head uses the whole head weight and its gradient is
reduce-scattered with the root's: the loss curve equals one plain process's with full logits."""

from __future__ import annotations

import pytest

from tests.multiprocess.test_fsdp_cpu import _assert_same_curves, _curve

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tied", ["false", "true"])
def test_fsdp2_chunked_loss_matches_one_process_with_full_logits(tmp_path, tied):
    common = ["checkpoint.export_hf=false", f"model.tie_word_embeddings={tied}"]
    sharded = _curve(tmp_path, "fsdp", 2, common + ["model.loss_chunk_size=7"])
    single = _curve(tmp_path, "single", 1, common)
    assert sharded["sharded"] == ["model"]
    _assert_same_curves(sharded, single)
