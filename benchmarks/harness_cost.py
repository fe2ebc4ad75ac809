"""What lm-eval costs during training (issue 17), on the default job.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/harness_cost.py [--steps 1000] [--out outputs/bench/harness]

One run of the default job (``python -m hydralign``'s config, in-process, its own run folder and MLflow store) with
``eval.harness.tasks=[hydralign_arithmetic] eval.harness.every=checkpoint``:

1. Added wall time of per-checkpoint evaluation (target <= 20%): the harness callback times each evaluation
   (``time/harness_seconds``, lm-eval's task building and generation); the job without it is the run's wall time
   less those seconds. Each evaluation scores all 500 held-out sums (``limit: null``, the config's default).
2. lm-eval vs hydralign's own greedy validation of the same prompts (target: harness <= 1.5x): after training,
   on the final weights, the 256 prompts the validation generates for (``eval.num_generate=256``, the first 256 of
   the val split, which are ``hydralign_arithmetic``'s first 256 documents) are answered by
   ``module.generation_counts()`` (hydralign's validation decoding, batch ``eval.batch_size=64``) and by
   ``hydralign.harness.adapter.evaluate`` at ``limit=256`` (lm-eval's ``HFLM`` + ``simple_evaluate``), at the
   batch 8 and at the validation's 64 (the harness's default: eval.batch_size); each timed 3 times, the median kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]


class SamePrompts(Callback):
    """After training: hydralign's validation decoding vs lm-eval on the same 256 prompts, same weights."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.result: dict = {}

    def on_train_end(self, trainer, module) -> None:
        from hydralign.harness.adapter import HarnessSettings, evaluate, task_manager
        from hydralign.harness.arithmetic_task import val_examples

        prompts = [module.tokenizer.decode(e.prompt_ids) for e in module.generation_examples]
        docs = [d["prompt"] for d in val_examples()[:len(prompts)]]
        same = len(prompts) == 256 and all(doc in p for doc, p in zip(docs, prompts))
        own, counts = self._time(lambda: module.generation_counts())
        self.result = {"prompts": len(prompts), "same_prompts": same, "hydralign_s": own,
                       "hydralign_exact_match": float(counts[1] / counts[0])}
        for batch in (8, 64):
            settings = HarnessSettings(tasks=("hydralign_arithmetic",), include_path=(), num_fewshot=None, limit=256,
                                       batch_size=batch, apply_chat_template=None, gen_kwargs=None, every="end")
            started = time.perf_counter()
            manager = task_manager(settings)
            setup = time.perf_counter() - started
            seconds, results = self._time(lambda s=settings, m=manager: evaluate(module.model, module.tokenizer, s, m,
                                                                                 module.stop_token_ids))
            self.result[f"harness_b{batch}_s"] = seconds
            self.result[f"harness_b{batch}_task_manager_s"] = setup
            self.result[f"harness_b{batch}_exact_match"] = results["results"]["hydralign_arithmetic"]["exact_match,none"]

    def _time(self, fn):
        times, out = [], None
        for _ in range(self.repeats):
            started = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="trainer.max_steps (the default job's: 1000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench" / "harness"))
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from hydralign.run.job import run
    from tests.helpers import compose_cfg

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{out}/mlflow.db"
    cfg = compose_cfg([f"trainer.max_steps={args.steps}", "eval.harness.tasks=[hydralign_arithmetic]",
                       "eval.harness.every=checkpoint", f"logger.tracking_uri={store}",
                       "trainer.enable_progress_bar=false"])
    run_dir = out / f"run{int(time.time())}"
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    probe = SamePrompts(args.repeats)
    started = time.perf_counter()
    metrics = run(cfg, callbacks=[probe])
    wall = time.perf_counter() - started

    client = MlflowClient(tracking_uri=store)
    run_id = (run_dir / "mlflow_run_id").read_text()
    harness = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "time/harness_seconds"))
    scores = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval/hydralign_arithmetic/exact_match"))
    probe_s = args.repeats * sum(probe.result[k] for k in ("hydralign_s", "harness_b8_s", "harness_b64_s")) + sum(
        probe.result[k] for k in ("harness_b8_task_manager_s", "harness_b64_task_manager_s"))
    evals = sum(v for _, v in harness)
    job = wall - probe_s  # the benchmark's own comparison after training is not the job's
    summary = {
        "steps": args.steps, "wall_s": wall, "probe_s": probe_s, "job_s": job, "evaluations": len(harness),
        "harness_total_s": evals, "harness_per_eval_s": evals / max(len(harness), 1),
        "job_without_harness_s": job - evals, "added_fraction": evals / (job - evals),
        "eval_exact_match_by_step": scores, "final_val_exact_match": metrics.get("val/exact_match"),
        **probe.result,
        "harness_b8_vs_hydralign": probe.result["harness_b8_s"] / probe.result["hydralign_s"],
        "harness_b64_vs_hydralign": probe.result["harness_b64_s"] / probe.result["hydralign_s"],
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
