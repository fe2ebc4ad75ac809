"""DPO for real on the embedded task: it learns from an SFT run, the precomputed reference equals the
live one and is shared, the batch split does not change the gradient, LoRA trains only adapters,
and chosen + rejected take one forward."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hydralign.run.job import run
from tests.helpers import tiny_cfg
from tests.recorder import Recorder

SHORT = ["method=dpo", "logger=none", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=512",
         "data.arithmetic.num_val=32", "eval.num_generate=0", "eval.at_start=false", "eval.every_n_steps=1000",
         "checkpoint.monitor=val/loss", "checkpoint.mode=min", "optimized_metric=val/loss",
         "checkpoint.save_last=false", "checkpoint.export_hf=false", "schedule=constant", "trainer.max_steps=5"]


def _run(tmp, overrides):
    rec = Recorder()
    metrics = run(tiny_cfg(tmp, SHORT + overrides), callbacks=[rec])
    return metrics, rec


def test_dpo_from_sft_learns_the_preference_and_keeps_the_answers(sft_trained, tmp_path):
    _, sft_metrics, sft_tmp = sft_trained
    cfg = tiny_cfg(tmp_path, ["method=dpo", f"init_from={sft_tmp / 'run'}", "data.arithmetic.max_digits=2",
                              "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128",
                              "eval.num_generate=128", "trainer.max_steps=200", "eval.every_n_steps=100",
                              "lr=1e-4", "method.beta=2.0", "trainer.log_every_n_steps=5"])
    metrics = run(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text()
    hist = {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in ("rewards/accuracies", "rewards/margins", "val/rewards/accuracies", "val/loss")}
    assert hist["val/loss"][0] == pytest.approx(0.6931472, abs=1e-5)  # step 0: policy = reference, ln 2
    assert hist["val/rewards/accuracies"][0] == 0.0  # every margin is exactly 0 before training
    last = hist["rewards/accuracies"][-4:]  # per optimizer step, 32 pairs each: steps 185 ... 200
    assert sum(last) / len(last) >= 0.9, hist["rewards/accuracies"]
    assert metrics["val/rewards/accuracies"] >= 0.9 and hist["val/loss"][-1] < 0.4
    assert hist["rewards/margins"][-1] > hist["rewards/margins"][0]
    assert metrics["val/exact_match"] >= 0.9 * sft_metrics["val/exact_match"]  # no collapse
    r = client.get_run(run_id)
    assert r.data.tags["method"] == "dpo"
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "train/loss",
                "val/exact_match"):
        assert key in r.data.metrics, key


def test_precomputed_reference_equals_live_and_is_shared(tmp_path, monkeypatch):
    from hydralign.methods import reference_cache

    cache = f"method.ref_cache_dir={tmp_path / 'cache'}"
    _, live = _run(tmp_path / "live", [])
    _, pre = _run(tmp_path / "pre", ["method.precompute_ref=true", cache])
    assert len(live.losses) == 5
    assert max(abs(a - b) for a, b in zip(live.losses, pre.losses)) < 1e-6, (live.losses, pre.losses)
    assert live.losses[0] == pytest.approx(0.6931472, abs=1e-6)
    assert not pre.module._frozen and pre.module.reference_logps is not None  # no reference model
    calls = []
    real = reference_cache.compute_logps
    monkeypatch.setattr(reference_cache, "compute_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    # The second job of a beta/lr sweep: reads the cache, computes no reference log-probs.
    _run(tmp_path / "second", ["method.precompute_ref=true", cache, "lr=3e-4", "method.beta=0.3"])
    assert calls == []
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    _run(tmp_path / "other", ["method.precompute_ref=true", cache, "data.max_seq_len=30"])  # other tokens
    assert calls and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    out = {}
    for micro in (4, 1):
        tmp = tmp_path_factory.mktemp(f"dpo_micro{micro}")
        out[micro] = _run(tmp, ["batch.effective=4", f"batch.micro={micro}", "trainer.max_steps=8", "lr=1e-3"])[1]
    return out


def test_effective_batch_invariance(splits):
    """micro 4 x accum 1 vs micro 1 x accum 4: the same gradients at step 1 and the same curve."""
    a, b = splits[4], splits[1]
    assert set(a.first_grads) == set(b.first_grads) and a.first_grads
    for name, grad in a.first_grads.items():
        torch.testing.assert_close(b.first_grads[name], grad, atol=1e-6, rtol=0, msg=name)
    assert max(abs(x - y) for x, y in zip(a.losses, b.losses)) < 1e-5
    assert len(set(a.losses)) > 1 and sum(g.abs().sum() for g in a.first_grads.values()) > 0  # it moves


def test_one_forward_for_chosen_and_rejected(tmp_path):
    counts = {"policy": 0, "reference": 0, "rows": []}

    class Count(Callback):
        def on_train_start(self, trainer, module):
            def hook(name):
                def fn(mod, args, kwargs):
                    if trainer.training:  # not the validation forwards
                        counts[name] += 1
                        counts["rows"].append(kwargs["input_ids"].shape[0])
                return fn
            module.model.register_forward_pre_hook(hook("policy"), with_kwargs=True)
            module._frozen["reference"].register_forward_pre_hook(hook("reference"), with_kwargs=True)

    run(tiny_cfg(tmp_path, SHORT + ["batch.effective=8", "batch.micro=4", "trainer.max_steps=3"]),
        callbacks=[Count()])
    assert counts["policy"] == counts["reference"] == 3 * 2  # 3 steps x 2 micro-batches, one forward each
    assert set(counts["rows"]) == {8}  # 4 pairs = 8 rows: chosen and rejected together


def test_lora_dpo_trains_only_adapters_and_the_adapter_reloads(sft_trained, tmp_path):
    from peft import PeftModel

    from hydralign.methods.dpo import pair_logps
    from hydralign.models import build_model, load_weights

    sft_cfg, _, sft_tmp = sft_trained
    sft_dir = sft_tmp / "run" / "hf_model"
    metrics, rec = _run(tmp_path, [f"init_from={sft_dir}", "peft=lora", "peft.r=8", "peft.alpha=16",
                                   "lr=1e-3", "checkpoint.export_hf=true", "trainer.max_steps=6"])
    model = rec.module.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not rec.module._frozen  # the reference is the adapter-disabled policy, no copy
    assert {n.removeprefix("model.") for n in rec.first_grads} == trainable  # only adapters get gradients
    # The frozen base is untouched: its weights equal the SFT export's.
    from safetensors.torch import load_file

    base = load_file(str(sft_dir / "model.safetensors"))
    for name, p in model.named_parameters():
        if "lora_" not in name and "base_layer" not in name and name.endswith("weight"):
            key = name.removeprefix("base_model.model.")
            if key in base:
                torch.testing.assert_close(p.detach().cpu(), base[key], atol=0, rtol=0, msg=name)
    run_dir = tmp_path / "run"
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    tok = rec.module.tokenizer
    fresh = build_model(sft_cfg.model, tok, seed=7)
    load_weights(fresh, str(sft_dir))
    reloaded = PeftModel.from_pretrained(fresh, str(run_dir / "adapter")).eval()
    from hydralign.data.batching import collate_items

    examples = rec.module.trainer.datamodule.val_examples[:8]
    batch = collate_items(examples, list(range(8)), tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(pair_logps(reloaded, batch)[0], pair_logps(model, batch)[0], atol=1e-5, rtol=0)
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 6
