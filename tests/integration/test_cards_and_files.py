"""Every reproduction card trains for real at tiny scale (its optimizer, schedule, eval and checkpoint
settings, on the tiny model and this CPU), and a run on local JSONL files goes end to end."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from hydralign.run.job import run
from tests.helpers import CONF, compose_cfg, tiny_cfg
from tests.integration.test_dpo_cards import EXPECTED as DPO_CARDS
from tests.integration.test_dpo_cards import SFT_CARDS as QLORA_SFT_CARDS

# The DPO and QLoRA cards train at tiny scale in test_dpo_cards.py (QLoRA as LoRA on this CPU), the
# distillation cards (a teacher run first) in test_early_vs_final.py, the RL cards (an episode budget, not
# trainer.max_steps) in test_grpo.py.
DISTILL_CARDS = {p.stem for p in (CONF / "experiment").glob("*.yaml") if "teacher_from: ???" in p.read_text()}
RL_CARDS = {p.stem for p in (CONF / "experiment").glob("*.yaml") if "override /method: grpo" in p.read_text()}
CARDS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
               if p.stem not in DPO_CARDS | QLORA_SFT_CARDS.keys() | DISTILL_CARDS | RL_CARDS)
SHRINK = ["model=tiny", "model.tokenizer=char", "model.chat_template=chatml", "hardware=cpu", "data=arithmetic",
          "data.max_seq_len=64", "batch.effective=8", "batch.grad_accum=null", "batch.micro=4",
          "trainer.max_epochs=null", "trainer.max_steps=4", "eval.every_n_steps=2", "eval.max_new_tokens=6",
          "eval.num_generate=8", "checkpoint.every_n_steps=2", "logger=none", "data.arithmetic.num_train=256",
          "data.arithmetic.num_val=32", "schedule.warmup_steps=null", "schedule.warmup_ratio=0.25",
          "eval.harness.every=none"]  # the cards' lm-eval tasks read the hub (names: test_card_harness_tasks)


@pytest.mark.parametrize("card", CARDS)
def test_card_trains_at_tiny_scale(card, tmp_path):
    cfg = tiny_cfg(tmp_path, [f"experiment={card}"] + SHRINK)
    card_cfg = compose_cfg([f"experiment={card}"])
    for group in ("optimizer", "method"):  # shrinking keeps the card's own optimizer and method settings
        assert OmegaConf.to_container(cfg[group], resolve=True) == OmegaConf.to_container(card_cfg[group],
                                                                                         resolve=True), group
    assert cfg.schedule.name == card_cfg.schedule.name
    metrics = run(cfg)
    assert metrics["train/steps"] == 4 and metrics["val/loss"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step000004.ckpt").is_file()


def test_run_on_local_jsonl_with_truncation(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]}
            for i in range(40)]
    rows += [{"prompt": "long " * 30, "completion": "x" * 40}]  # 198 tokens > max_seq_len: truncated
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_cfg(tmp_path, ["data=jsonl", f"data.train_files=[{path}]", "data.val_fraction=0.2",
                              "data.max_seq_len=160", "batch.effective=8", "batch.micro=4"])
    metrics = run(cfg)
    assert metrics["train/steps"] == 4 and 0 <= metrics["val/exact_match"] <= 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    r = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text())
    kept = r.data.metrics["data/train_kept"] + r.data.metrics["data/val_kept"]
    assert kept == 41 and r.data.metrics["data/train_truncated"] + r.data.metrics["data/val_truncated"] == 1
    assert r.data.params["num_train_examples"] == str(int(r.data.metrics["data/train_kept"]))
