"""data.packing through the path users run (hydralign.run.job.run): padding-free micro-batches train exactly
like padded ones (same examples per step, same losses); packed rows train with each step's loss still
divided once by its units."""

from __future__ import annotations

import pytest

from hydralign.run.job import run
from tests.helpers import tiny_cfg
from tests.recorder import Recorder

MIXED = ["data.arithmetic.pad_operands=false", "data.arithmetic.max_digits=3", "logger=none",
         "checkpoint.save_last=false", "checkpoint.export_hf=false", "eval.num_generate=0",
         "checkpoint.monitor=val/loss", "checkpoint.mode=min", "optimized_metric=val/loss",
         "trainer.max_steps=4", "eval.every_n_steps=4", "batch.micro=8", "batch.effective=16"]


class Shapes(Recorder):
    """Also the shape of every training micro-batch's input rows and whether they carry position ids."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], bool]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.shapes.append((tuple(batch["input_ids"].shape), "position_ids" in batch))


def _run(tmp_path, name, overrides):
    rec = Shapes()
    metrics = run(tiny_cfg(tmp_path / name, MIXED + overrides), callbacks=[rec])
    return rec, metrics


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_padding_free_trains_exactly_like_padded(tmp_path, method):
    padded, m_padded = _run(tmp_path, "padded", [f"method={method}"])
    free, m_free = _run(tmp_path, "free", [f"method={method}", "data.packing=padding_free"])
    assert len(free.losses) == 4
    rows = 8 if method == "sft" else 16  # a pair is 2 padded rows
    assert all(shape[0] == rows and not pos for shape, pos in padded.shapes)
    assert all(shape[0] == 1 and pos for shape, pos in free.shapes)  # one row per micro-batch
    for a, b in zip(free.losses, padded.losses):
        assert abs(a - b) < 1e-5, (free.losses, padded.losses)
    assert abs(m_free["val/loss"] - m_padded["val/loss"]) < 1e-5
    for name, g in padded.first_grads.items():
        assert (free.first_grads[name] - g).abs().max() < 1e-5, name


@pytest.mark.parametrize("method, row", [("sft", 64), ("dpo", 128)])  # a pair needs chosen + rejected
def test_packed_rows_train_and_the_plan_counts_rows(tmp_path, capsys, method, row):
    rec, metrics = _run(tmp_path, "packed", [f"method={method}", "data.packing=packed",
                                             f"data.max_tokens_per_micro={row}", "batch.micro=2", "batch.effective=4",
                                             "trainer.max_steps=12", "eval.every_n_steps=12"])
    out = capsys.readouterr().out
    assert "train rows (packed)" in out and f"packed (rows of <= {row} tokens" in out
    assert len(rec.losses) == 12 and rec.losses[-1] < rec.losses[0]
    assert all(shape[0] == 2 and shape[1] <= row and pos for shape, pos in rec.shapes)


def test_packed_steps_do_not_depend_on_how_rows_are_split_into_micro_batches(tmp_path):
    """Rows are the schedule's items and a step's loss is divided once by its units: 4 rows per step as
    1 x 4, 2 x 2 or 4 x 1 (micro x accumulation) give the same losses and gradients."""
    runs = {micro: _run(tmp_path, f"micro{micro}", ["data.packing=packed", "data.max_tokens_per_micro=128",
                                                     f"batch.micro={micro}", "batch.effective=4",
                                                     "trainer.max_steps=3", "eval.every_n_steps=3"])[0]
            for micro in (4, 2, 1)}
    ref = runs[4]
    for micro in (2, 1):
        assert max(abs(a - b) for a, b in zip(runs[micro].losses, ref.losses)) < 1e-5
        for name, g in ref.first_grads.items():
            assert (runs[micro].first_grads[name] - g).abs().max() < 1e-5, (micro, name)
