"""Issue 11's target on the default task: from an early SFT checkpoint (greedy val exact match ~0.3), GRPO
raises val exact match by >= 0.2 absolute within 10 minutes of wall clock, validation included.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_default_task.py \\
        --init-from outputs/bench/grpo_default/sft3000:step=N [override ...]

runs what a user runs, ``python -m hydralign method=grpo init_from=<ref> <overrides>``, through
``hydralign.run.job.run`` with the composed config (MLflow logging as by default, into this run's own store),
and prints: the whole run's wall clock (start-up, every validation and the final export included), the
validation curve (step, episodes, seconds since launch, val/exact_match, val/loss) and the sampled reward
per logged step, then whether the target was met: the LAST validation's exact match minus the step-0
validation's (eval.at_start), and the time that took. The best validation is printed beside it but does
not count: a run must end better, not pass through better.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_GAIN, BUDGET_S = 0.2, 600.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init-from", required=True, help="the SFT checkpoint, e.g. <sft run>:step=N")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("overrides", nargs="*", help="extra overrides, e.g. lr=1e-4 method.temperature=1.0")
    args = ap.parse_args()

    import lightning as L
    from omegaconf import open_dict

    from hydralign.run.job import run
    from tests.helpers import compose_cfg

    run_dir = Path(args.run_dir or REPO / "outputs" / "bench" / "grpo_default" / time.strftime("%Y%m%d-%H%M%S"))
    overrides = ["method=grpo", f"init_from='{args.init_from}'", "trainer.log_every_n_steps=1",
                 "trainer.enable_progress_bar=false", f"logger.tracking_uri=sqlite:///{run_dir}/mlflow.db",
                 *args.overrides]
    print("$ python -m hydralign " + " ".join(overrides), flush=True)
    launched = time.perf_counter()

    class Curve(L.Callback):
        def __init__(self):
            self.train: list[tuple[int, float, float, float]] = []  # step, s, rewards/mean, accuracy
            self.val: list[tuple[int, float, float, float]] = []  # step, s, exact match, loss

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            if batch["window_last"] and "rewards/mean" in m:
                self.train.append((trainer.global_step, time.perf_counter() - launched,
                                   float(m["rewards/mean"]), float(m["kl"])))

        def on_validation_end(self, trainer, module):
            m = trainer.callback_metrics
            if not trainer.sanity_checking and "val/exact_match" in m:
                self.val.append((trainer.global_step, time.perf_counter() - launched,
                                 float(m["val/exact_match"]), float(m["val/loss"])))

    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    curve = Curve()
    run(cfg, callbacks=[curve])
    wall = time.perf_counter() - launched

    from hydralign.plan.core import make_plan

    per_step = make_plan(cfg).rollout.episodes_per_step
    print(f"\nwhole run: {wall:.1f} s (budget {BUDGET_S:.0f} s); run dir {run_dir}")
    print("\n| step | episodes | s since launch | val/exact_match | val/loss | sampled reward (mean of the steps since the last row) |")
    print("|---:|---:|---:|---:|---:|---:|")
    prev = -1
    for step, t, em, loss in curve.val:
        window = [r for s, _, r, _ in curve.train if prev < s <= step]
        reward = f"{sum(window) / len(window):.3f}" if window else "-"
        print(f"| {step} | {step * per_step:g} | {t:.0f} | {em:.3f} | {loss:.4f} | {reward} |")
        prev = step
    if not curve.val:
        raise SystemExit("no validation with exact match ran (eval.num_generate=0?)")
    start, end = curve.val[0][2], curve.val[-1][2]
    best = max(curve.val, key=lambda v: v[2])
    met = end - start >= TARGET_GAIN and wall <= BUDGET_S
    print(f"\nval exact match {start:.3f} -> {end:.3f} ({end - start:+.3f}) in {wall:.0f} s; best {best[2]:.3f} "
          f"at step {best[0]}. Target (+{TARGET_GAIN} within {BUDGET_S:.0f} s): {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
