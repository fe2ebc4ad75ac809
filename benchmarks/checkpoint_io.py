"""Checkpoint save and load: time and size of hydralign's full training-state checkpoint (weights, AdamW
state, scheduler, loops) for the tiny model and a ~100M-parameter Llama, one plain process (one file) and
FSDP2 on 2 CPU processes (a folder of per-rank shards, torch.distributed.checkpoint); and what time-based
checkpointing costs (target, issue 8: < 2% of step time at checkpoint.every_n_minutes=5).

Each case trains a few real steps through ``hydralign.run.job.run`` with a checkpoint at every step, timing
``RollingCheckpoints.save`` (the whole collective: temporary name, every rank's write, rename, re-link,
pruning) and, in a second run resuming the last one, Lightning's restore (modules, callbacks, optimizer,
loops). The callback's own per-step cost without the save (the time check: a clock read, and every ~1% of
the interval a broadcast of rank 0's decision) is timed around it, averaged over every step. Overhead at a 5-minute interval =
(save seconds + 300 s / step seconds x check seconds) / 300 s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_io.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.models import LLAMA100M  # noqa: E402

MODELS = {
    "tiny": ["model=tiny"],
    "llama100m": LLAMA100M,
}
COMMON = ["data.arithmetic.num_train=256", "data.arithmetic.num_val=8", "eval.num_generate=0", "eval.at_start=false",
          "batch.effective=4", "batch.micro=2", "logger=none", "checkpoint.export_hf=false",
          "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=1", "checkpoint.keep_last_k=1",
          "checkpoint.monitor=val/loss", "checkpoint.mode=min", "optimized_metric=val/loss"]


def size_of(path: Path) -> int:
    path = path.resolve()
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worker(out: Path, overrides: list[str]) -> None:
    """One run (any number of ranks): rank 0 writes the timings to ``out``."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
    from omegaconf import open_dict

    from hydralign.checkpoints.saving import RollingCheckpoints
    from hydralign.run.job import run
    from tests.helpers import compose_cfg

    timings: dict[str, list[float]] = {"save": [], "check": [], "restore": [], "step": []}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            timings[name].append(time.perf_counter() - t0)
            return result
        return wrapper

    save, check = RollingCheckpoints.save, RollingCheckpoints.on_train_batch_end
    RollingCheckpoints.save = timed("save", save)

    def without_saving(self, trainer):  # the callback's own per-step cost, its save timed apart
        t0 = time.perf_counter()
        saved = []
        self.save, real = (lambda trainer: saved.append(1)), self.save
        try:
            check(self, trainer, None, None, {"window_last": True}, 0)
        finally:
            self.save = real
        timings["check"].append(time.perf_counter() - t0)
        return bool(saved)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch.get("window_last", True) and without_saving(self, trainer):
            self.save(trainer)

    RollingCheckpoints.on_train_batch_end = on_train_batch_end
    restore_modules = _CheckpointConnector._restore_modules_and_callbacks
    restore_training = _CheckpointConnector.restore_training_state
    _CheckpointConnector._restore_modules_and_callbacks = timed("restore", restore_modules)
    _CheckpointConnector.restore_training_state = timed("restore", restore_training)

    class StepTimes(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx % trainer.accumulate_grad_batches == 0:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch["window_last"]:
                timings["step"].append(time.perf_counter() - self.t0)

    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.run_dir = str(out.parent / "run")
    run(cfg, callbacks=[StepTimes()])
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(timings))


def launch(tmp: Path, name: str, processes: int, overrides: list[str]) -> dict:
    out = tmp / f"{name}.json"
    cmd = [sys.executable] if processes == 1 else [str(Path(sys.executable).parent / "torchrun"),
                                                   "--nproc-per-node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, str(Path(__file__).resolve()), "--worker", str(out), *overrides],
                          capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def case(tmp: Path, model: str, processes: int, steps: int) -> dict:
    hardware = ["hardware=cpu"] if processes == 1 else ["hardware=cpu_2proc"]
    if processes > 1:
        hardware.append("hardware.strategy=fsdp")
    base = [*MODELS[model], *hardware, *COMMON, "checkpoint.every_n_minutes=5"]
    name = f"{model}_{processes}proc"
    first = launch(tmp / name, "train", processes, base + [f"trainer.max_steps={steps}"])
    ckpt = tmp / name / "run" / "checkpoints" / f"step{steps:06d}.ckpt"
    size = size_of(ckpt)
    again = launch(tmp / name, "resume", processes, base + [f"trainer.max_steps={steps + 1}",
                                                            f"resume={tmp / name / 'run'}"])
    save_s = statistics.median(first["save"][1:] or first["save"])  # the first save also creates the folder
    step_s = statistics.median(first["step"])
    check_s = statistics.mean(first["check"]) if first["check"] else 0.0
    interval = 300.0
    overhead = (save_s + interval / step_s * check_s) / interval
    return {"model": model, "processes": processes, "size_mb": size / 2**20, "save_s": save_s,
            "load_s": sum(again["restore"]), "step_s": step_s, "check_us": check_s * 1e6,
            "overhead_5min_pct": 100 * overhead}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for processes in args.processes:
                rows.append(case(Path(tmp), model, processes, args.steps))
                r = rows[-1]
                print(f"{r['model']:10s} {r['processes']} proc: {r['size_mb']:8.1f} MiB, save {r['save_s']:.3f} s, "
                      f"load {r['load_s']:.3f} s, step {r['step_s']:.3f} s, time check {r['check_us']:.0f} us/step, "
                      f"every 5 min: {r['overhead_5min_pct']:.3f}% of step time", flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
