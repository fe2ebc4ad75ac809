"""Training-step throughput: hydralign's Lightning path vs a bare PyTorch loop, side by side.

Same model init, same micro-batches (hydralign's window schedule), same AdamW + schedule + clipping.
Rounds alternate bare / hydralign; the median step time of each (after warm-up steps) is compared.

    .venv/bin/python benchmarks/throughput.py --model tiny --steps 150
    .venv/bin/python benchmarks/throughput.py --model llama25m --steps 20
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from hydralign.data.batching import TrainMicroBatches, WindowSchedule
from hydralign.data.tokenize import Example
from hydralign.losses.token_ce import token_nll_sum
from hydralign.methods.sft import SFTModule
from hydralign.optim.schedules import lr_factor
from hydralign.plan.core import make_plan
from tests.helpers import compose_cfg

WARMUP = 5
PBAR = os.environ.get("PBAR", "1") == "1"  # PBAR=0 measures without the progress bar


def model_and_data(name: str, cfg):
    if name == "tiny":
        from hydralign.data.chat import get_template
        from hydralign.data.module import PostTrainingData
        from hydralign.models import build_model, build_tokenizer

        template = get_template(cfg.model.chat_template)
        tok = build_tokenizer(cfg.model, template)
        data = PostTrainingData(cfg, tok, template)
        data.load()
        return (lambda: build_model(cfg.model, tok, 0)), data.train_examples, tok.pad_token_id
    # ~25M parameters: hidden 512, 8 layers, 32k vocab; sequences of 256 tokens, all trained.
    config = LlamaConfig(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         intermediate_size=1376, max_position_embeddings=256, tie_word_embeddings=True)
    rng = random.Random(0)
    examples = []
    for _ in range(512):
        ids = [rng.randrange(1, 32000) for _ in range(256)]
        examples.append(Example(ids, list(ids)))

    def build():
        torch.manual_seed(0)
        return LlamaForCausalLM(config)

    return build, examples, 0


def loader(cfg, plan, examples, pad_id):
    sched = WindowSchedule([e.num_loss_tokens for e in examples], plan.effective_batch, plan.micro_batch, 1, 0,
                           plan.seed)
    return DataLoader(TrainMicroBatches(examples, sched, pad_id, plan.total_steps), batch_size=None)


def bare(cfg, plan, build, examples, pad_id) -> list[float]:
    model = build().train()
    ocfg, scfg = cfg.optimizer, cfg.schedule
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=tuple(ocfg.betas), eps=ocfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, scfg.name, plan.total_steps, plan.warmup_steps or 0, scfg.min_lr_ratio))
    times, t0 = [], time.perf_counter()
    for batch in loader(cfg, plan, examples, pad_id):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, _ = token_nll_sum(logits, batch["labels"])
        (loss_sum / batch["window_tokens"]).backward()
        del logits, loss_sum  # free the logits before the next forward, as a returning function would
        if batch["window_last"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            now = time.perf_counter()
            times.append(now - t0)
            t0 = now
    return times[WARMUP:]


class StepTimer(Callback):
    def __init__(self):
        self.times, self.t0 = [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch["window_last"]:
            now = time.perf_counter()
            if self.t0 is not None:
                self.times.append(now - self.t0)
            self.t0 = now


def hydralign(cfg, plan, build, examples, pad_id) -> list[float]:
    from hydralign.tracking.recorder import make_logger

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        with open_dict(cfg):
            cfg.logger.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        logger = make_logger(cfg, plan, tmp)
        module = SFTModule(build(), None, plan, cfg, [], [])
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=plan.total_steps, max_epochs=1,
                            accumulate_grad_batches=plan.grad_accum, gradient_clip_val=cfg.optimizer.grad_clip,
                            logger=logger, callbacks=[timer], enable_checkpointing=False, limit_val_batches=0,
                            num_sanity_val_steps=0, enable_progress_bar=PBAR, enable_model_summary=False,
                            log_every_n_steps=cfg.trainer.log_every_n_steps, use_distributed_sampler=False)
        trainer.fit(module, train_dataloaders=loader(cfg, plan, examples, pad_id))
    return timer.times[WARMUP - 1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["tiny", "llama25m"], default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    overrides = [f"trainer.max_steps={args.steps}"]
    if args.model == "llama25m":
        overrides += ["batch.effective=8", "batch.micro=8", "data.max_seq_len=256"]
    cfg = compose_cfg(overrides)
    plan = make_plan(cfg, num_train_examples=512 if args.model == "llama25m" else None)
    build, examples, pad_id = model_and_data(args.model, cfg)
    results: dict[str, list[float]] = {"bare": [], "hydralign": []}
    for _ in range(args.rounds):
        results["bare"] += bare(cfg, plan, build, examples, pad_id)
        results["hydralign"] += hydralign(cfg, plan, build, examples, pad_id)
    med = {k: statistics.median(v) for k, v in results.items()}
    params = sum(p.numel() for p in build().parameters())
    print(f"model={args.model} params={params / 1e6:.2f}M batch={plan.effective_batch} steps={args.steps} "
          f"rounds={args.rounds} threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:10s} median step {v * 1000:8.2f} ms  ({1 / v:7.2f} steps/s, n={len(results[k])})")
    print(f"  ratio hydralign/bare throughput: {med['bare'] / med['hydralign']:.3f}")


if __name__ == "__main__":
    main()
