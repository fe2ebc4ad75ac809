"""Effective-batch invariance: splitting one optimizer step's batch into micro-batches differently
must not change the loss or the gradient (DESIGN.md section 5). Sequences have unequal lengths and
unequal numbers of loss tokens, which is exactly where a per-micro-batch mean goes wrong."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hydralign.data.batching import WindowSchedule
from hydralign.run.job import run

SPLITS = [(8, 1), (4, 2), (2, 4)]  # (micro, grad_accum) at effective batch 8


class Recorder(Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.first_grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.losses.append(float(module.last_window_loss))
        if not self.first_grads:  # gradients of step 1, before clipping
            self.first_grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def _train(make_cfg, micro: int, steps: int) -> Recorder:
    cfg = make_cfg([
        "batch.effective=8", f"batch.micro={micro}", f"trainer.max_steps={steps}", "logger=none",
        "data.arithmetic.pad_operands=false", "data.arithmetic.num_train=256", "eval.at_start=false",
        "eval.every_n_steps=1000", "eval.num_generate=0", "checkpoint.export_hf=false",
        "checkpoint.save_last=false", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
        "optimized_metric=val/loss",
        "schedule=constant", "lr=3e-3",
    ])
    rec = Recorder()
    run(cfg, callbacks=[rec])
    return rec


def test_micro_batches_really_have_unequal_token_counts():
    from hydralign.data.arithmetic import make_splits
    from hydralign.data.templates import CHATML
    from hydralign.data.tokenize import encode
    from hydralign.models import char_tokenizer

    convs = [r["messages"] for r in make_splits(0, 256, 64, 3, pad_operands=False)["train"]]
    examples, _ = encode(char_tokenizer(), CHATML, convs, 64, "truncate")
    sched = WindowSchedule([e.num_loss_tokens for e in examples], 8, 2, 1, 0, seed=0)
    counts = [sum(examples[i].num_loss_tokens for i in sched.micro_batch(k)[0]) for k in range(4)]
    assert len(set(counts)) > 1, counts


@pytest.fixture(scope="module")
def recorders(tmp_path_factory):
    from tests.helpers import tiny_cfg

    out = {}
    for micro, _ in SPLITS:
        path = tmp_path_factory.mktemp(f"micro{micro}")
        out[micro] = _train(lambda o, p=path: tiny_cfg(p, o), micro, steps=20)
    return out


def test_first_step_loss_and_gradients_match(recorders):
    ref = recorders[8]
    for micro, _ in SPLITS[1:]:
        other = recorders[micro]
        assert other.losses[0] == pytest.approx(ref.losses[0], abs=1e-6)
        for name, grad in ref.first_grads.items():
            torch.testing.assert_close(other.first_grads[name], grad, atol=1e-6, rtol=0, msg=name)


def test_loss_curves_match_over_20_steps(recorders):
    ref = recorders[8].losses
    assert len(ref) == 20 and ref[-1] < ref[0]  # it trains
    for micro, _ in SPLITS[1:]:
        curve = recorders[micro].losses
        assert max(abs(a - b) for a, b in zip(curve, ref)) < 1e-5, (micro, curve, ref)
