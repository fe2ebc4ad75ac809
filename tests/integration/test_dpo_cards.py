"""The DPO reproduction cards (Tulu 3, DeepSeek LLM, Firefly) and the DPO sweep: each card's plan has the
recipe's numbers, the QLoRA cards plan anywhere but are refused on CPU hardware, every card trains for real
at tiny scale, and the sweep file composes to its grid."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.run.job import run
from tests.helpers import CONF, REPO, compose_cfg, tiny_cfg

# card -> the recipe's numbers. world = nodes x devices; eff = world x micro x accum.
EXPECTED = {
    # open-instruct docs/tulu3.md (8B DPO command) + issue #464: effective 128; REPRODUCTIONS.md section 1:
    # 4 nodes x 8 GPUs, micro 1, accum 4; lr 5e-7 linear, warmup 0.1; dpo_norm, beta 5; 1 epoch of
    # 271,409 - 1% held out = 268,695 pairs.
    "tulu3_8b_dpo": dict(world=32, micro=1, accum=4, eff=128, lr=5e-7, schedule="linear",
                         loss="sigmoid_norm", beta=5.0, steps=268695 // 128, peft="none"),
    # The Tulu 3 paper's printed effective batch (32): accumulation 1 on the same 32 GPUs.
    "tulu3_8b_dpo_paper": dict(world=32, micro=1, accum=1, eff=32, lr=5e-7, schedule="linear",
                               loss="sigmoid_norm", beta=5.0, steps=268695 // 32, peft="none"),
    # DeepSeek LLM (arXiv 2401.02954) section 4: lr 5e-6, batch 512, 1 epoch, warmup + cosine; 8 GPUs and
    # beta 0.1 are assumptions; UltraFeedback train_prefs (61,135 pairs) stands in for the private data.
    "deepseek_llm_7b_dpo": dict(world=8, micro=2, accum=32, eff=512, lr=5e-6, schedule="cosine",
                                loss="sigmoid", beta=0.1, steps=61135 // 512, peft="none"),
    # Firefly train_args/dpo/qlora/qwen1.5-7b-dpo-qlora.json: 1 V100, batch 1 x accum 16, lr 2e-4,
    # constant_with_warmup (100 steps), beta 0.1, TRL's default sigmoid loss, 1 epoch of UltraFeedback.
    "firefly_qwen15_7b_dpo_qlora": dict(world=1, micro=1, accum=16, eff=16, lr=2e-4, schedule="constant",
                                        loss="sigmoid", beta=0.1, steps=61135 // 16, peft="qlora"),
}
SFT_CARDS = {  # Firefly train_args/sft/qlora/qwen1.5-7b-sft-qlora.json; ultrachat_200k train_sft: 207,865
    "firefly_qwen15_7b_sft_qlora": dict(world=1, micro=1, accum=16, eff=16, lr=2e-4, schedule="constant",
                                        steps=207865 // 16, peft="qlora"),
}
QLORA_CARDS = ["firefly_qwen15_7b_sft_qlora", "firefly_qwen15_7b_dpo_qlora"]

# Tiny scale: the tiny Llama on this CPU, synthetic pairs, two optimizer steps. A card's accumulation is
# asserted (batch.grad_accum), so it is restated for the tiny batch; QLoRA becomes plain LoRA on CPU.
SHRINK = ["model=tiny", "hardware=cpu", "data=arithmetic", "data.max_seq_len=64", "batch.effective=8",
          "batch.micro=4", "batch.grad_accum=2", "trainer.max_epochs=null", "trainer.max_steps=2",
          "eval.every_n_steps=2", "eval.num_generate=2", "eval.max_new_tokens=4", "eval.at_start=false",
          "checkpoint.every_n_steps=null", "checkpoint.export_hf=false", "logger=none",
          "data.arithmetic.num_train=64", "data.arithmetic.num_val=8",
          "schedule.warmup_steps=null", "schedule.warmup_ratio=0.5",
          "eval.harness.every=none"]  # the cards' lm-eval tasks read the hub (names: test_card_harness_tasks)


def _check_plan(card: str, want: dict):
    cfg = compose_cfg([f"experiment={card}"])
    plan = make_plan(cfg)
    assert (plan.world_size, plan.micro_batch, plan.grad_accum, plan.effective_batch) == \
        (want["world"], want["micro"], want["accum"], want["eff"])
    assert plan.effective_batch == plan.world_size * plan.micro_batch * plan.grad_accum
    assert cfg.batch.grad_accum == want["accum"]  # given in the card, so the plan asserts it
    assert plan.lr == pytest.approx(want["lr"]) and plan.schedule == want["schedule"]
    assert plan.total_steps == want["steps"] and plan.epochs == 1
    assert cfg.peft.name == want["peft"]
    return cfg, plan


@pytest.mark.parametrize("card", sorted(EXPECTED))
def test_dpo_card_plan_has_the_recipes_numbers(card):
    want = EXPECTED[card]
    cfg, plan = _check_plan(card, want)
    assert plan.method == "dpo" and plan.data_kind == "preference"
    assert cfg.method.loss_type == want["loss"] and cfg.method.beta == pytest.approx(want["beta"])
    # No exact answer in preference data: checkpoints and sweeps follow the same validation metric.
    assert cfg.checkpoint.monitor == cfg.optimized_metric == "val/rewards/accuracies"
    assert cfg.checkpoint.mode == "max"


@pytest.mark.parametrize("card", sorted(SFT_CARDS))
def test_sft_card_plan_has_the_recipes_numbers(card):
    cfg, plan = _check_plan(card, SFT_CARDS[card])
    assert plan.method == "sft" and cfg.checkpoint.monitor == cfg.optimized_metric == "val/loss"


def test_tulu_cards_differ_only_in_the_batch():
    full, paper = (OmegaConf.to_container(compose_cfg([f"experiment={c}"]))
                   for c in ("tulu3_8b_dpo", "tulu3_8b_dpo_paper"))
    assert (full.pop("batch")["effective"], paper.pop("batch")["effective"]) == (128, 32)
    assert full == paper


@pytest.mark.parametrize("card", QLORA_CARDS)
def test_qlora_card_plans_here_but_is_refused_on_cpu_hardware(card, monkeypatch):
    from hydralign.distributed.machine import check_machine

    cfg = compose_cfg([f"experiment={card}"])
    assert cfg.peft.load_in_4bit and cfg.peft.target_modules == "all-linear"
    assert (cfg.peft.r, cfg.peft.alpha, cfg.peft.dropout) == (64, 16, 0.05)  # Firefly's lora_rank/alpha/dropout
    assert cfg.hardware.precision == "16-mixed" and cfg.optimizer.grad_clip == pytest.approx(0.3)
    make_plan(cfg)  # the dry run's plan needs no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="hardware=1xV100 needs 1 node"):
        check_machine(cfg.hardware)
    with pytest.raises(ConfigError, match="peft=qlora quantizes the base to 4 bits with bitsandbytes, which needs CUDA"):
        make_plan(compose_cfg([f"experiment={card}", "hardware=cpu"]))


def test_qlora_card_run_exits_2_within_seconds_naming_the_gpu(tmp_path):
    card = "firefly_qwen15_7b_dpo_qlora"
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "hydralign", f"experiment={card}", f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2, out.stderr
    assert "hardware=1xV100 needs 1 node(s) x 1 GPU(s)" in out.stderr and "Traceback" not in out.stderr
    assert time.time() - started < 30
    dry = subprocess.run([sys.executable, "-m", "hydralign", f"experiment={card}", "dry_run=true",
                          f"hydra.run.dir={tmp_path}/dry"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "effective_batch           16 = 1 x 1 x 16" in dry.stdout and "grad_accum (derived)      16" in dry.stdout


@pytest.mark.parametrize("card", sorted(EXPECTED) + sorted(SFT_CARDS))
def test_card_trains_at_tiny_scale(card, tmp_path):
    peft = "lora" if card in QLORA_CARDS else "none"
    cfg = tiny_cfg(tmp_path, [f"experiment={card}", f"peft={peft}"] + SHRINK)
    metrics = run(cfg)
    assert metrics["train/steps"] == 2 and metrics["val/loss"] > 0
    if card in EXPECTED:
        assert {"val/rewards/accuracies", "val/rewards/margins", "val/rewards/chosen"} <= set(metrics)
        assert 0 <= metrics["val/rewards/accuracies"] <= 1
        assert f"best/{cfg.checkpoint.monitor}" in metrics  # the card's monitor is a metric the run logs
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_dpo_sweep_composes_to_its_grid():
    lines = (REPO / "sweeps" / "dpo_beta_lr.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_" and "init_from=<sft run dir>" in lines[1]
    from hydralign.config.store import register

    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+sweeps=dpo_beta_lr", "init_from=/some/sft/run"],
                      return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {"method.beta": ["0.1", "0.5"], "lr": ["5e-5", "2e-4"]}
    assert cfg.method.name == "dpo" and cfg.method.precompute_ref and cfg.init_from == "/some/sft/run"
    plan = make_plan(cfg)
    assert plan.method == "dpo" and plan.frozen_models[0].startswith("reference: log-probs precomputed once")
