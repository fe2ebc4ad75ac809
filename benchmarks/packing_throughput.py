"""Trained tokens per second on length-skewed SFT data: padded vs padding-free vs packed micro-batches,
through the path users run (``hydralign.run.job.run``: the Trainer ``hydralign.run.build`` builds, its callbacks,
checkpointing off), on the ~25M Llama (``model=llama25m``, a 32k word-level tokenizer, sequences up to
1024). TRL's SFTTrainer with its own ``padding_free`` option runs on the same files and model
(``benchmarks/trl_padding_free.py``, in a separate environment with TRL installed).

Lengths are drawn like a chat mixture: log-normal, median ~120 tokens, a long tail clipped at 1024
(``lengths``); every record is a user turn (40% of its words) and an assistant answer (the loss).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.packing_throughput --steps 9 --rounds 2 \
        --trl-python /tmp/trlvenv/bin/python     # TRL's run joins each round (its docstring: the venv)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from benchmarks.dpo_data import FIRST_WORD, VOCAB, write_tokenizer
from hydralign.run.job import run
from tests.helpers import tiny_cfg

WARMUP = 3
MAX_LEN = 1024


def lengths(n: int, seed: int) -> list[int]:
    """Total words per record: log-normal (median e^4.8 ~ 120, sigma 0.9), clipped to [24, MAX_LEN - 16]."""
    rng = random.Random(seed)
    return [min(MAX_LEN - 16, max(24, int(math.exp(rng.gauss(4.8, 0.9))))) for _ in range(n)]


def write_data(root: Path, n: int = 2000, seed: int = 0) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(root / "tokenizer")
    rng = random.Random(seed + 1)
    words = lambda k: " ".join(f"w{rng.randrange(FIRST_WORD, VOCAB)}" for _ in range(k))  # noqa: E731
    path = root / "train.jsonl"
    with path.open("w") as f:
        for total in lengths(n, seed):
            prompt = max(1, int(total * 0.4))
            f.write(json.dumps({"messages": [{"role": "user", "content": words(prompt)},
                                             {"role": "assistant", "content": words(total - prompt)}]}) + "\n")
    return {"tokenizer": str(tok), "train": str(path)}


class TokenTimer(Callback):
    """Seconds and trained (non-padding) input tokens of every optimizer step."""

    def __init__(self):
        self.steps: list[tuple[float, int]] = []
        self.t0, self.tokens = None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int((batch["segments"] >= 0).sum())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch["window_last"]:
            now = time.perf_counter()
            self.steps.append((now - self.t0, self.tokens))
            self.t0, self.tokens = now, 0


VARIANTS = {
    "padded": ["data.packing=none"],
    "padding_free": ["data.packing=padding_free"],
    "packed": ["data.packing=packed", f"data.max_tokens_per_micro={MAX_LEN}", "batch.micro=2", "batch.effective=4"],
}


def measure(files: dict[str, str], variant: str, steps: int, tmp: Path) -> dict[str, float]:
    overrides = ["model=llama25m", f"model.tokenizer={files['tokenizer']}", f"model.max_position_embeddings={MAX_LEN}",
                 "data=jsonl", f"data.train_files=[{files['train']}]", "data.val_fraction=0.01",
                 f"data.max_seq_len={MAX_LEN}", "batch.micro=8", "batch.effective=16", f"trainer.max_steps={steps}",
                 f"eval.every_n_steps={steps}", "eval.num_generate=0", "checkpoint.monitor=val/loss",
                 "checkpoint.mode=min", "optimized_metric=val/loss", "checkpoint.save_last=false",
                 "checkpoint.export_hf=false", "checkpoint.every_n_steps=null", "logger=none",
                 "schedule.warmup_steps=1", "schedule.warmup_ratio=null", "trainer.log_every_n_steps=1"] + VARIANTS[variant]
    timer = TokenTimer()
    run(tiny_cfg(tmp / variant, overrides), callbacks=[timer])
    kept = timer.steps[WARMUP:]
    secs, toks = sum(s for s, _ in kept), sum(t for _, t in kept)
    return {"tokens_per_s": toks / secs, "step_s": statistics.median(s for s, _ in kept),
            "tokens_per_step": toks / len(kept)}


def trl(python: str, root: str, steps: int) -> dict[str, float]:
    script = Path(__file__).with_name("trl_padding_free.py")
    out = subprocess.run([python, str(script), root, "--steps", str(steps)], capture_output=True, text=True)
    found = re.search(r"padding_free: (\d+) tokens/s over \d+ steps \(([\d.]+) s per step, (\d+) tokens", out.stdout)
    if not found:
        sys.exit(f"TRL's run printed no result:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return {"tokens_per_s": float(found[1]), "step_s": float(found[2]), "tokens_per_step": float(found[3])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="outputs/bench/packing")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--trl-python", default=None, help="a python with TRL installed: TRL's run joins each round")
    args = ap.parse_args()
    files = write_data(Path(args.root))
    ls = lengths(2000, 0)
    print(f"lengths: median {statistics.median(ls)}, mean {statistics.mean(ls):.0f}, p90 "
          f"{sorted(ls)[int(0.9 * len(ls))]}, max {max(ls)} words (+ 6 ChatML tokens)", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    if args.trl_python:
        results["TRL SFTTrainer padding_free"] = []
    for r in range(args.rounds):  # rounds alternate the variants: drift on a shared machine hits each alike
        for v in results:
            if v.startswith("TRL"):
                res = trl(args.trl_python, args.root, args.steps)
            else:
                res = measure(files, v, args.steps, Path(args.root) / f"runs{r}")
            results[v].append(res)
            print(f"round {r} {v}: {res['tokens_per_s']:.0f} tokens/s, median step {res['step_s']:.2f} s, "
                  f"{res['tokens_per_step']:.0f} tokens per step", flush=True)
    base = statistics.median(x["tokens_per_s"] for x in results.get("padded", [])) if "padded" in results else None
    print("\n| variant | tokens/s (median of rounds) | vs padded |\n|---|---:|---:|")
    for v, rs in results.items():
        tps = statistics.median(x["tokens_per_s"] for x in rs)
        print(f"| {v} | {tps:.0f} | {tps / base:.2f}x |" if base else f"| {v} | {tps:.0f} | |")


if __name__ == "__main__":
    main()
