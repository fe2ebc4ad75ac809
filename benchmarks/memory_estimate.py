"""The plan's memory estimate (hydralign/plan/memory.py) against the measured peak of a training run on CPU.

Each case runs ``hydralign.run.job.run`` (the Trainer as hydralign.run.build builds it: callbacks, checkpointing off, no
logger) for a few optimizer steps of full-length SFT rows (every row 256 tokens: the estimate's worst case) inside
``torch.profiler`` with ``profile_memory=True``. The measured peak is the maximum of the running sum of every CPU
tensor allocation and free the profiler records (its ``[memory]`` events, in time order) from before the model is
built to the end: the peak of live tensor memory, not RSS. Each case runs in a fresh process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_estimate.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_estimate.py --models llama25m --micro 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.models import LLAMA100M  # noqa: E402

MODELS = {
    "llama25m": ["model=llama25m"],
    "llama100m": LLAMA100M,
}


def overrides(model: str, micro: int, steps: int, extra: list[str], root: Path) -> list[str]:
    from benchmarks.dpo_data import VOCAB, build

    paths = build(REPO / "outputs" / "bench" / "llama25m_data", 128, 8)
    return MODELS[model] + [
        f"model.tokenizer={paths['tokenizer']}", f"model.vocab_size={VOCAB}", "data=jsonl",
        f"data.train_files=[{paths['sft_train']}]", f"data.val_files=[{paths['sft_val']}]", "data.max_seq_len=256",
        f"batch.effective={micro}", f"batch.micro={micro}", f"trainer.max_steps={steps}", "logger=none",
        "eval.num_generate=0", "eval.at_start=false", "eval.every_n_steps=1000", "checkpoint.export_hf=false",
        "checkpoint.save_last=false", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
        "optimized_metric=val/loss", "trainer.enable_progress_bar=false", "+trainer.num_sanity_val_steps=0",
        "+trainer.limit_val_batches=0", f"run_dir={root}",
    ] + extra


def peak_tensor_bytes(prof) -> tuple[int, int]:
    """(peak of the running sum of CPU allocations, bytes still allocated at the end) from the profile."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, live


def worker(args) -> None:
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from hydralign.plan.core import make_plan
    from hydralign.run.job import run
    from tests.helpers import compose_cfg

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(overrides(args.models[0], args.micro, args.steps, args.extra, Path(tmp) / "run"))
        est = make_plan(cfg).memory
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(cfg)
        peak, end = peak_tensor_bytes(prof)
    print("RESULT " + json.dumps({"model": args.models[0], "micro": args.micro, "extra": args.extra,
                                  "estimate": est.__dict__, "measured_peak_gib": peak / 2**30,
                                  "live_at_end_gib": end / 2**30}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--extra", nargs="*", default=[])
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for model in args.models:
        cmd = [sys.executable, __file__, "--worker", "--models", model, "--micro", str(args.micro),
               "--steps", str(args.steps), "--extra", *args.extra]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(out.stdout[-3000:], out.stderr[-3000:])
            raise SystemExit(f"{model}: no result")
        rows.append(json.loads(line[0][7:]))
    print("| model | micro x seq | estimate (params / grads / optim / activations / logits) | estimated | measured peak "
          "| est / measured |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        e = r["estimate"]
        pieces = " / ".join(f"{e[k] * 1024:.0f}" for k in ("parameters_gib", "gradients_gib", "optimizer_gib",
                                                           "activations_gib", "logits_gib"))
        print(f"| {r['model']} {' '.join(r['extra'])} | {r['micro']} x 256 | {pieces} MiB | {e['total_gib'] * 1024:.0f} MiB "
              f"| {r['measured_peak_gib'] * 1024:.0f} MiB | {e['total_gib'] / r['measured_peak_gib']:.3f} |")


if __name__ == "__main__":
    main()
