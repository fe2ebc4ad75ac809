"""Default-task DPO from an SFT checkpoint, timed: the whole command, and when rewards/accuracies first
reaches 0.9 (train, as logged every trainer.log_every_n_steps, and on validation).

    .venv/bin/python benchmarks/dpo_default_task.py --init-from outputs/runs/sft_base

runs, unchanged but for where the run directory goes,

    python -m hydralign method=dpo init_from=outputs/runs/sft_base hydra.run.dir=outputs/bench/dpo_default/<time>

(its defaults: lr 5e-5, beta 0.5, 300 steps of 32 pairs, validation every 50 steps with 256 greedy
generations, MLflow store outputs/mlflow.db) and reads the run's metrics back from MLflow, with
their timestamps, measured from the moment the command was launched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init-from", default="outputs/runs/sft_base")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("overrides", nargs="*", help="extra overrides, e.g. trainer.max_steps=100")
    args = ap.parse_args()
    run_dir = Path(args.run_dir or REPO / "outputs" / "bench" / "dpo_default" / time.strftime("%Y%m%d-%H%M%S"))
    cmd = [sys.executable, "-m", "hydralign", "method=dpo", f"init_from={args.init_from}",
           f"hydra.run.dir={run_dir}", *args.overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    launched = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - launched
    (run_dir / "bench_stdout.log").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench_stdout.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        raise SystemExit(f"the command failed with exit code {proc.returncode}")

    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from hydralign.tracking.store import tracking_uri

    os.chdir(REPO)  # the default store is relative to where the command ran
    client = MlflowClient(tracking_uri(OmegaConf.load(run_dir / "config.yaml").logger.tracking_uri))
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    def history(name: str) -> dict[int, tuple[float, float]]:
        return {m.step: (m.value, m.timestamp / 1000 - launched) for m in client.get_metric_history(run_id, name)}

    train_acc, train_loss = history("rewards/accuracies"), history("train/loss")
    val = {k: history(k) for k in ("val/rewards/accuracies", "val/rewards/margins", "val/loss", "val/exact_match")}
    startup = history("time/startup_seconds")
    print(f"\nwhole command: {wall:.1f} s (exit {proc.returncode}); startup to first step: "
          f"{next(iter(startup.values()))[0]:.1f} s" if startup else f"\nwhole command: {wall:.1f} s")
    print("\ntrain (per logged step: the mean over that optimizer step's 32 pairs)")
    print("| step | rewards/accuracies | train/loss | s since launch |")
    print("|---:|---:|---:|---:|")
    for step in sorted(train_acc):
        acc, t = train_acc[step]
        print(f"| {step} | {acc:.3f} | {train_loss.get(step, (float('nan'),))[0]:.4f} | {t:.1f} |")
    print("\nvalidation (all val pairs; exact match from greedy generation)")
    print("| step | val/rewards/accuracies | val/rewards/margins | val/loss | val/exact_match | s since launch |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step in sorted(val["val/loss"]):
        row = [val[k].get(step, (float("nan"), 0))[0] for k in val]
        print(f"| {step} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.4f} | {row[3]:.3f} | {val['val/loss'][step][1]:.1f} |")
    for name, hist in (("train rewards/accuracies", train_acc), ("val/rewards/accuracies", val["val/rewards/accuracies"])):
        hit = [(s, v, t) for s, (v, t) in sorted(hist.items()) if v >= TARGET]
        print(f"first {name} >= {TARGET}: " + (f"step {hit[0][0]} ({hit[0][1]:.3f}) at {hit[0][2]:.1f} s after launch"
                                                if hit else "never"))
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()
