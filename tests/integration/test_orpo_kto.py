"""ORPO and KTO for real on the embedded task: each learns from the default SFT run (ORPO also from random init), KTO's
step-0 identities hold through the whole module, splitting a step differently changes neither loss nor gradient,
KTO's precomputed reference equals the live one, and both plan on the Tulu 3 8B preference card's shape."""

from __future__ import annotations

import pytest
import torch

from hydralign.plan import format_plan, make_plan
from hydralign.run.job import run
from tests.helpers import compose_cfg, tiny_cfg
from tests.recorder import Recorder

TASK = ["data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128",
        "eval.num_generate=128", "trainer.log_every_n_steps=5"]
SHORT = ["logger=none", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=256", "data.arithmetic.num_val=32",
         "data.arithmetic.pad_operands=false", "eval.num_generate=0", "eval.at_start=false", "eval.every_n_steps=1000",
         "checkpoint.monitor=val/loss", "checkpoint.mode=min", "optimized_metric=val/loss", "checkpoint.save_last=false",
         "checkpoint.export_hf=false", "schedule=constant", "batch.effective=8"]


def _history(cfg, tmp_path, keys):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text()
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


def test_orpo_from_random_init_learns_the_task(tmp_path):
    cfg = tiny_cfg(tmp_path, ["method=orpo", *TASK, "trainer.max_steps=400", "eval.every_n_steps=200"])
    metrics = run(cfg)
    hist = _history(cfg, tmp_path, ["val/exact_match", "val/log_odds_chosen", "val/nll_loss"])
    assert hist["val/exact_match"][0] == 0.0 and metrics["val/exact_match"] >= 0.6, hist  # 0.93 here
    assert metrics["val/rewards/accuracies"] >= 0.9
    assert hist["val/log_odds_chosen"][-1] > hist["val/log_odds_chosen"][0] + 2.0
    assert hist["val/nll_loss"][-1] < 0.25 * hist["val/nll_loss"][0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "log_odds_ratio",
                "log_odds_chosen", "nll_loss", "logps/chosen", "logps/rejected"):
        assert key in metrics and f"val/{key}" in metrics, key


def test_orpo_from_the_sft_run_widens_the_odds_and_keeps_the_answers(sft_trained, tmp_path):
    _, sft_metrics, sft_tmp = sft_trained
    cfg = tiny_cfg(tmp_path, ["method=orpo", f"init_from={sft_tmp / 'run'}", *TASK, "lr=5e-5", "trainer.max_steps=100",
                              "eval.every_n_steps=100"])
    metrics = run(cfg)
    hist = _history(cfg, tmp_path, ["val/log_odds_chosen", "val/rewards/margins", "val/nll_loss"])
    assert hist["val/log_odds_chosen"][-1] > hist["val/log_odds_chosen"][0]
    assert hist["val/rewards/margins"][-1] > hist["val/rewards/margins"][0]
    assert hist["val/nll_loss"][-1] < hist["val/nll_loss"][0]
    assert metrics["val/exact_match"] >= 0.95 * sft_metrics["val/exact_match"]


def test_kto_from_the_sft_run_separates_desirable_from_undesirable(sft_trained, tmp_path):
    _, sft_metrics, sft_tmp = sft_trained
    cfg = tiny_cfg(tmp_path, ["method=kto", f"init_from={sft_tmp / 'run'}", *TASK, "trainer.max_steps=200",
                              "eval.every_n_steps=100"])
    metrics = run(cfg)
    hist = _history(cfg, tmp_path, ["val/loss", "val/rewards/margins", "val/kl", "val/rewards/chosen"])
    # Step 0, policy = reference: every reward and the KL estimate are 0, so each loss is w x (1 - s(0)) = 0.5.
    assert hist["val/loss"][0] == pytest.approx(0.5, abs=1e-6)
    assert hist["val/rewards/margins"][0] == 0.0 and hist["val/kl"][0] == 0.0 and hist["val/rewards/chosen"][0] == 0.0
    assert hist["val/rewards/margins"][-1] > 0.1 and hist["val/loss"][-1] < 0.49, hist
    assert metrics["val/exact_match"] >= 0.85 * sft_metrics["val/exact_match"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "logps/chosen", "logps/rejected"):
        assert key in metrics and f"val/{key}" in metrics, key


class StepKL(Recorder):
    """The Recorder, plus KTO's KL estimate of every optimizer step."""

    def __init__(self):
        super().__init__()
        self.kl: list[float] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        super().on_before_optimizer_step(trainer, module, optimizer)
        if getattr(module, "_kl", None) is not None:
            self.kl.append(float(module._kl))


def _train(tmp, method: str, micro: int, extra=()) -> StepKL:
    rec = StepKL()
    run(tiny_cfg(tmp, SHORT + [f"method={method}", f"batch.micro={micro}", "trainer.max_steps=6", "lr=3e-3",
                               *extra]), callbacks=[rec])
    return rec


@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_splitting_a_step_changes_neither_loss_nor_gradient(tmp_path, method):
    """Effective batch 8 as 1 x 8, 2 x 4 and 4 x 2 (accumulation x micro). KTO's KL estimate is taken over the step's
    8 completions' twins whatever the split, so its value, and with it every loss, is the same."""
    recs = {micro: _train(tmp_path / f"m{micro}", method, micro) for micro in (8, 4, 2)}
    ref = recs[8]
    assert ref.losses[-1] < ref.losses[0]  # it trains
    for micro in (4, 2):
        other = recs[micro]
        assert max(abs(a - b) for a, b in zip(other.losses, ref.losses)) < 1e-5, (micro, other.losses, ref.losses)
        for name, grad in ref.first_grads.items():
            torch.testing.assert_close(other.first_grads[name], grad, atol=1e-6, rtol=0, msg=name)
        assert other.kl == pytest.approx(ref.kl, abs=1e-4)
    if method == "kto":  # the estimate really moves (0 while policy = reference, then clamped at 0 or above)
        assert ref.kl[0] == 0.0 and max(ref.kl) > 0.5, ref.kl


@pytest.mark.parametrize("weight, first", [(1.0, 0.5), (2.0, 1.0)])
def test_kto_first_step_is_the_step0_identity(tmp_path, weight, first):
    """Policy = reference at step 0: rewards 0 and KL 0, so every completion's loss is w x (1 - s(0)) = w / 2."""
    rec = _train(tmp_path, "kto", 8, [f"method.desirable_weight={weight}", f"method.undesirable_weight={weight}"])
    assert rec.losses[0] == pytest.approx(first, abs=1e-6)


def test_kto_precomputed_reference_equals_the_live_one(tmp_path):
    live = _train(tmp_path / "live", "kto", 4)
    cached = _train(tmp_path / "cached", "kto", 4, ["method.precompute_ref=true",
                                                    f"method.ref_cache_dir={tmp_path / 'cache'}"])
    assert max(abs(a - b) for a, b in zip(cached.losses, live.losses)) < 1e-5
    assert list((tmp_path / "cache").glob("*.safetensors"))


TULU3_SHAPE = ["model=tulu3_8b_sft", "hardware=4x8xA100", "data=tulu3_8b_preference_mixture", "optimizer=adamw",
               "schedule=linear", "batch.effective=128", "batch.micro=1", "trainer.max_steps=null",
               "trainer.max_epochs=1", "lr=5e-7", "data.max_seq_len=2048"]


@pytest.mark.parametrize("method, frozen", [("orpo", "none"), ("kto", "reference: frozen copy")])
def test_plans_on_the_tulu3_8b_preference_card_shape(method, frozen):
    plan = make_plan(compose_cfg([f"method={method}", *TULU3_SHAPE]))
    text = format_plan(plan)
    assert (plan.world_size, plan.micro_batch, plan.grad_accum, plan.effective_batch) == (32, 1, 4, 128)
    assert plan.total_steps == 2099 and plan.memory is not None and plan.memory.fits
    assert frozen in text
