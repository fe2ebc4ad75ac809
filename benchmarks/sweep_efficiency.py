"""Optuna search with pruning vs the full grid, on the embedded task, and per-trial start-up overhead.

Runs (from the repository root, ~15 min on 2 CPU cores):
  grid:   python -m hydralign -m lr=1e-4,3e-4,1e-3,3e-3,1e-2 seed=0,1,2 <COMMON>
  optuna: python -m hydralign +sweeps=lr_search -m <COMMON> hydra.sweeper.n_trials=8 ...
then reads both sweeps back from MLflow: training steps spent (the last validated step of every
run, pruned ones included), the grid-best cell's mean +- std over seeds, the Optuna best value,
and time/startup_seconds (job start -> first training step) of every run.

    .venv/bin/python benchmarks/sweep_efficiency.py [--out outputs/bench_sweeps]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

COMMON = ["trainer.max_steps=600", "eval.every_n_steps=100", "optimized_metric=val/loss",
          "checkpoint.export_hf=false", "eval.num_generate=64", "trainer.enable_progress_bar=false"]


def sweep(out: Path, name: str, args: list[str]) -> tuple[Path, float]:
    sweep_dir = out / name
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "hydralign", "-m", *args, *COMMON,
                           f"hydra.sweep.dir={sweep_dir}", f"logger.experiment_name=bench_{name}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} sweep failed:\n{proc.stderr[-4000:]}")
    return sweep_dir, time.time() - t0


def children(sweep_dir: Path):
    info = json.loads((sweep_dir / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    rows = []
    for r in runs:
        hist = client.get_metric_history(r.info.run_id, "val/loss")
        rows.append({"lr": float(r.data.params["lr"]), "seed": int(r.data.params["seed"]),
                     "state": r.data.tags.get("trial_state"), "val_loss": r.data.metrics.get("val/loss"),
                     "steps": max((m.step for m in hist), default=0),
                     "startup": r.data.metrics.get("time/startup_seconds")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/bench_sweeps")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    grid_dir, grid_wall = sweep(out, "grid", ["lr=1e-4,3e-4,1e-3,3e-3,1e-2", "seed=0,1,2"])
    opt_dir, opt_wall = sweep(out, "optuna", [
        "+sweeps=lr_search", "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=8",
        "hydra.sweeper.sampler.n_startup_trials=3", "hydra.sweeper.pruner_kwargs.n_startup_trials=2",
        "hydra.sweeper.pruner_kwargs.n_warmup_steps=200", f"hydra.sweeper.storage={out}/optuna.journal",
        f"hydra.sweeper.study_name=bench-{int(time.time())}"])
    grid, opt = children(grid_dir), children(opt_dir)
    cells = defaultdict(list)
    for r in grid:
        cells[r["lr"]].append(r["val_loss"])
    best_lr = min(cells, key=lambda lr: statistics.fmean(cells[lr]))
    best_mean, best_std = statistics.fmean(cells[best_lr]), statistics.stdev(cells[best_lr])
    done = [r for r in opt if r["state"] == "COMPLETE"]
    best_opt = min(done, key=lambda r: r["val_loss"])
    grid_steps, opt_steps = sum(r["steps"] for r in grid), sum(r["steps"] for r in opt)
    startups = [r["startup"] for r in grid + opt if r["startup"] is not None]
    print("grid cells (lr: mean +- std of final val/loss over 3 seeds):")
    for lr in sorted(cells):
        print(f"  {lr:g}: {statistics.fmean(cells[lr]):.4f} +- {statistics.stdev(cells[lr]):.4f}")
    print(f"grid best: lr {best_lr:g}, val/loss {best_mean:.4f} +- {best_std:.4f}; {len(grid)} runs, "
          f"{grid_steps} training steps, {grid_wall:.0f} s")
    print("optuna trials (lr, state, final val/loss, steps): " + "; ".join(
        f"{r['lr']:.2e} {r['state']} {r['val_loss'] if r['val_loss'] is not None else float('nan'):.4f} "
        f"{r['steps']}" for r in sorted(opt, key=lambda r: r["lr"])))
    print(f"optuna best: lr {best_opt['lr']:.3g}, val/loss {best_opt['val_loss']:.4f}; {len(opt)} trials "
          f"({sum(r['state'] == 'PRUNED' for r in opt)} pruned), {opt_steps} training steps "
          f"({opt_steps / grid_steps:.2f} of the grid's), {opt_wall:.0f} s")
    print(f"within the grid-best's seed noise: {best_opt['val_loss'] <= best_mean + best_std}")
    print(f"time/startup_seconds per job: median {statistics.median(startups):.2f} s, max {max(startups):.2f} s "
          f"(n={len(startups)})")


if __name__ == "__main__":
    main()
