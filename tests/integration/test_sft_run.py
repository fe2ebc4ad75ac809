"""A short run of the default job: it learns, its checkpoints and HF export load, MLflow holds it."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def trained(sft_trained):
    return sft_trained


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_default_task_is_learned(trained):
    cfg, metrics, tmp = trained
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp / "run" / "mlflow_run_id").read_text()
    em = _history(client, run_id, "val/exact_match")
    assert [s for s, _ in em] == [0, 400, 800] and em[0][1] == 0.0  # step 0: scored before training
    assert metrics["val/exact_match"] == em[-1][1] >= 0.25, em  # 0.99 on the reference machine
    val_loss = _history(client, run_id, "val/loss")
    assert val_loss[-1][1] < 0.5 * val_loss[1][1] < val_loss[0][1], val_loss
    loss = _history(client, run_id, "train/loss")
    assert all(s % 10 == 0 for s, _ in loss) and loss[-1][0] == 800 and loss[-1][1] < 0.25 * loss[0][1]


def test_checkpoints_and_files_exist(trained):
    _, metrics, tmp = trained
    run_dir = tmp / "run"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts
    assert any(n.startswith("best-step") for n in ckpts)
    assert [n for n in ckpts if n.startswith("step")] == ["step000800.ckpt"]  # keep_last_k=1 of 200 ... 800
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["effective_batch"] == 32 and plan["total_steps"] == 800
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val/exact_match"] == pytest.approx(metrics["val/exact_match"])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 800


def test_hf_export_reloads_and_generates_the_same(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hydralign.models import build_model, load_weights

    cfg, _, tmp = trained
    hf_dir = tmp / "run" / "hf_model"
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    # The same weights through the other door: the last Lightning checkpoint, loaded weights_only.
    twin = build_model(cfg.model, tok, seed=123).eval()
    load_weights(twin, str(tmp / "run" / "checkpoints" / "last.ckpt"))
    prompt = tok.apply_chat_template([{"role": "user", "content": "12+34="}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<s><|user|>\n12+34=\n<|assistant|>\n"  # model=tiny's template: open-instruct's tulu, after BOS
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out_a = model.generate(ids, max_new_tokens=6, do_sample=False)
    out_b = twin.generate(ids, max_new_tokens=6, do_sample=False,
                          eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id)
    assert out_a.shape[1] > ids.shape[1] and out_a.tolist() == out_b.tolist()


def test_mlflow_params_tags_metrics(trained):
    cfg, metrics, tmp = trained
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp / "run" / "mlflow_run_id").read_text()
    r = client.get_run(run_id)
    p = r.data.params
    assert (p["effective_batch"], p["grad_accum"], p["world_size"], p["micro_batch"]) == ("32", "1", "1", "32")
    assert p["lr"] == "0.001" and p["optimizer.lr"] == "0.001" and p["model.name"] == "tiny"
    assert p["eval.prompt_format"] == "zero_shot" and p["data.arithmetic.max_digits"] == "2"
    assert r.data.tags["method"] == "sft" and len(r.data.tags["config_hash"]) == 12
    assert "git_commit" in r.data.tags
    assert r.info.status == "FINISHED"
    for key in ("train/loss", "val/loss", "val/exact_match", "val/exact_match_flex", "val/repetition_rate",
                "train/lr", "data/train_kept"):
        assert key in r.data.metrics, key
    assert r.data.metrics["val/exact_match"] == pytest.approx(metrics["val/exact_match"])
    assert r.info.artifact_uri.startswith((tmp / "mlartifacts" / "hydralign").as_uri())  # beside the store
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "plan.json"} <= artifacts
