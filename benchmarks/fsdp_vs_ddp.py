"""FSDP2 vs DDP on 2 CPU processes (gloo, torchrun): optimizer steps per second on the ~25M-parameter Llama
(conf/model/llama25m.yaml, char tokenizer) at the same effective batch, 256-token sequences. Target
(issue 8): FSDP2 >= 0.9x DDP. Three variants: DDP, FSDP2 with its defaults (least memory), and FSDP2 with
its throughput options (hardware.fsdp_reshard_after_forward=false: one all-gather per layer and micro-batch;
hardware.fsdp_accumulate_unsharded=true: one reduce-scatter per step, as DDP all-reduces once). Rounds
alternate the variants; each round's median step time (after warm-up steps) is reported, and the ratio of
the medians over rounds. Run it on a quiet machine (both processes share the 2 cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fsdp_vs_ddp.py --steps 12 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def write_data(path: Path, n: int, chars: int) -> None:
    """Prompt/completion pairs whose completions fill the sequence: every position is trained."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    with open(path, "w") as fh:
        for _ in range(n):
            completion = "".join(rng.choice(letters) for _ in range(chars))
            fh.write(json.dumps({"prompt": "copy:", "completion": completion}) + "\n")


VARIANTS = {
    "ddp": ["hardware.strategy=ddp"],
    "fsdp": ["hardware.strategy=fsdp"],
    "fsdp_fast": ["hardware.strategy=fsdp", "hardware.fsdp_reshard_after_forward=false",
                  "hardware.fsdp_accumulate_unsharded=true"],
}


def one_run(tmp: Path, name: str, variant: str, args) -> dict:
    out = tmp / name
    overrides = [
        "hardware=cpu_2proc", *VARIANTS[variant], "model=llama25m", "data=jsonl",
        f"data.train_files=[{tmp / 'train.jsonl'}]", "data.val_fraction=0.05", f"data.max_seq_len={args.seq_len}",
        f"batch.effective={args.effective}", f"batch.micro={args.micro}", f"trainer.max_steps={args.steps}",
        f"eval.every_n_steps={args.steps}", "eval.at_start=false", "eval.num_generate=0",
        "checkpoint.monitor=val/loss", "checkpoint.mode=min", "checkpoint.save_last=false", "optimized_metric=val/loss",
    ]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "tests.multiprocess.curve_job", str(out),
                           *overrides], capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "curve.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--effective", type=int, default=16, help="examples per optimizer step, both ranks")
    parser.add_argument("--micro", type=int, default=4, help="examples per rank per forward")
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        write_data(tmp / "train.jsonl", 2 * args.effective * args.steps, args.seq_len - 20)
        for r in range(args.rounds):
            for variant in VARIANTS:
                curve = one_run(tmp, f"{variant}{r}", variant, args)
                steps = curve["step_seconds"][WARMUP:]
                medians[variant].append(statistics.median(steps))
                print(f"round {r} {variant:9s}: median step {medians[variant][-1]:.3f} s "
                      f"({1 / medians[variant][-1]:.3f} steps/s) over {len(steps)} steps; "
                      f"final train/loss {curve['train'][str(args.steps)]:.4f}", flush=True)
    ddp, fsdp, fast = (statistics.median(medians[v]) for v in VARIANTS)
    accum = args.effective // (2 * args.micro)
    print(f"effective batch {args.effective} = 2 processes x micro {args.micro} x accumulation {accum}, "
          f"{args.seq_len}-token sequences")
    print(f"DDP {1 / ddp:.3f} steps/s; FSDP2 {1 / fsdp:.3f} steps/s = {ddp / fsdp:.3f}x DDP; FSDP2 with its "
          f"throughput options {1 / fast:.3f} steps/s = {ddp / fast:.3f}x DDP (target >= 0.9)")


if __name__ == "__main__":
    main()
