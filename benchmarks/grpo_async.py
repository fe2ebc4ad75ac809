"""Issue 19: 1 learner + 1 generator process with max_staleness=1 beside the synchronous single-process GRPO run,
on this machine's CPU cores, from the same SFT checkpoint, over seeds.

    flock /tmp/hydralign-heavy.lock .venv/bin/python benchmarks/grpo_async.py [--seeds 0 1 2] [--steps 80]

Both run what a user runs (``python -m hydralign method=grpo init_from=<sft> ...``; the generator one adds
``hardware=cpu_2proc hardware.generator_devices=1 method.max_staleness=1``), logging to their own MLflow store.
Episodes per second are taken between the first and the last logged training step (MLflow timestamps: start-up and
the first rollout left out, validations in between kept); the learning curve is the sampled reward per step and
val exact match every ``--eval-every`` steps. The SFT start is the 2-digit task at 800 steps (the integration
fixture's; greedy val exact match ~0.99), sampled at temperature 2 so the reward starts ~0.25 and has room to rise
(tests/integration/test_grpo.py's setting). Threads: the synchronous run with OMP_NUM_THREADS=1 and =2 (it may use
both cores), each process of the generator run with 1 (one core each).

``--task default --init-from <sft run>:step=N`` runs on the default job's task instead (3-digit sums, the method's
own defaults: 16 x 8 at temperature 1, lr 5e-5) from a checkpoint the user picked, e.g. an early one whose greedy
exact match is ~0.3, so that val exact match has room to rise (benchmarks/grpo_default_task.py's setting).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFT = ["data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128",
       "eval.num_generate=128", "eval.every_n_steps=400", "checkpoint.keep_last_k=1",
       "trainer.log_every_n_steps=10", "logger=none", "trainer.enable_progress_bar=false"]
GRPO = ["method=grpo", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128",
        "checkpoint.save_last=false", "checkpoint.export_hf=false", "trainer.log_every_n_steps=1",
        "eval.max_new_tokens=4", "method.prompts_per_step=16", "method.num_generations=8", "batch.micro=32",
        "lr=5e-5", "eval.num_generate=128", "trainer.enable_progress_bar=false"]
DEFAULT_TASK = ["method=grpo", "checkpoint.save_last=false", "checkpoint.export_hf=false", "trainer.log_every_n_steps=1",
                "trainer.enable_progress_bar=false"]
MODES = {"sync_1thread": (["hardware=cpu"], "1"), "sync_2threads": (["hardware=cpu"], "2"),
         "gen1_stale1": (["hardware=cpu_2proc", "hardware.generator_devices=1", "method.max_staleness=1"], "1")}


def _hydralign(args: list[str], threads: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    out = subprocess.run([sys.executable, "-m", "hydralign", *args], cwd=REPO, env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])


def _metrics(store: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    return {k: sorted((m.step, m.timestamp / 1000.0, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in ("episodes", "rewards/mean", "val/exact_match", "is/ratio_mean", "time/waiting_s",
                      "time/generation_s", "time/training_s")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench" / "grpo_async"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--tag", default="", help="a suffix for the run names (with --extra)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every GRPO run")
    ap.add_argument("--sft-steps", type=int, default=800, help="the SFT start's steps (an early start: e.g. 200)")
    ap.add_argument("--temperature", type=float, default=2.0, help="method.temperature of the GRPO runs")
    ap.add_argument("--task", choices=("2digit", "default"), default="2digit",
                    help="default: the default job's task and GRPO settings, from --init-from")
    ap.add_argument("--init-from", default=None, help="the SFT start (a run, or <run>:step=N) instead of --sft-steps")
    args = ap.parse_args()
    out = Path(args.out)
    sft = args.init_from or out / ("sft" if args.sft_steps == 800 else f"sft{args.sft_steps}")
    grpo = GRPO if args.task == "2digit" else DEFAULT_TASK
    if args.init_from is None and not (sft / "hf_model").is_dir():
        started = time.perf_counter()
        _hydralign(SFT + [f"trainer.max_steps={args.sft_steps}", f"hydra.run.dir={sft}"], "1")
        print(f"SFT start: {time.perf_counter() - started:.0f} s", flush=True)
    results = {}
    for seed in args.seeds:
        for mode in args.modes:
            extra, threads = MODES[mode]
            name = f"{mode}_seed{seed}{args.tag}"
            store = f"sqlite:///{out / name}.db"
            if not (out / name / "metrics.json").is_file():
                _hydralign(grpo + extra + args.extra + [f"init_from='{sft}'", f"seed={seed}", f"trainer.max_steps={args.steps}",
                                           f"method.temperature={args.temperature}",
                                           f"eval.every_n_steps={args.eval_every}", "logger=mlflow",
                                           f"logger.tracking_uri={store}", f"hydra.run.dir={out / name}"], threads)
            m = _metrics(store)
            (_, t0, e0), (_, t1, e1) = m["episodes"][0], m["episodes"][-1]
            rewards = [v for _, _, v in m["rewards/mean"]]
            tenth = max(1, len(rewards) // 8)
            results[name] = {
                "episodes_per_s": (e1 - e0) / (t1 - t0), "reward_first": sum(rewards[:tenth]) / tenth,
                "reward_last": sum(rewards[-tenth:]) / tenth,
                "val_exact_match": {int(s): v for s, _, v in m["val/exact_match"]},
                "mean_s": {k: sum(v for _, _, v in m[k]) / max(1, len(m[k])) for k in
                           ("time/generation_s", "time/training_s", "time/waiting_s") if m[k]},
                "is_ratio_mean": sum(v for _, _, v in m["is/ratio_mean"]) / max(1, len(m["is/ratio_mean"])),
            }
            print(name, json.dumps(results[name]), flush=True)
    (out / f"summary{args.tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
