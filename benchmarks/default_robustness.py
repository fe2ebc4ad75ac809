"""Does the default job learn on every machine? ``python -m hydralign`` over seeds and numeric environments.

    .venv/bin/python benchmarks/default_robustness.py                       # seeds 0-9 x every environment
    .venv/bin/python benchmarks/default_robustness.py --seeds 0-2 --envs threads1,threads2
    .venv/bin/python benchmarks/default_robustness.py --chain               # + DPO and GRPO from seed 0's run

Each run is what a new user types, in a fresh folder of its own (its own ``outputs/mlflow.db``):
``python -m hydralign seed=S`` with the environment's variables, and nothing else. The console's validation
lines (``[step N] val/exact_match ...``) give the curve. An environment changes the floating-point summation
order (torch's thread count, MKL's code path or its reproducibility mode, ATen's vector width), which is what
decided before whether the run left the task's loss plateau. Before running, each environment's numeric
fingerprint (a fixed forward and backward, hashed) is printed beside the default one's: an environment with
the same fingerprint as ``threads2`` does not change the numbers on this CPU (MKL ignores
``MKL_ENABLE_INSTRUCTIONS`` on some CPUs), which the table then says.

Runs are scheduled so that their threads never exceed the machine's cores (two 1-thread runs share 2 cores;
a 2- or 4-thread run runs alone), so a run's wall time is its own; the table marks the default environment,
whose wall time is the target (< 120 s on 2 cores). Results append to ``<out>/results.jsonl``, and a rerun
skips the cells already there, so an interrupted benchmark continues.

``--chain``: from seed 0's run in every environment, ``python -m hydralign method=dpo init_from=<run>``
(target: val/rewards/accuracies >= 0.9 at the end, val exact match no lower than 0.1 below the SFT run's),
and in ``--grpo-envs``, ``python -m hydralign method=grpo init_from=<run>:step=N`` from the first checkpoint
whose validation exact match is in [0.2, 0.5] (target: +0.2 in under 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# name -> environment variables. threads2 is the default environment on a 2-core machine (torch's default
# thread count there) and the one the wall-time target is about. The code-path variants run with one thread
# each, so two share the 2 cores (the thread count is the threads* rows' question).
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "threads1": {"OMP_NUM_THREADS": "1"},
    "threads2": {"OMP_NUM_THREADS": "2"},
    "threads4": {"OMP_NUM_THREADS": "4"},
    "threads1_mkl_sse4_2": {"OMP_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "threads1_mkl_avx2": {"OMP_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "threads1_mkl_cbwr": {"OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"},
    "threads1_aten_default": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
}
DEFAULT_ENV = "threads2"
STEP_LINE = re.compile(r"^\[step (\d+)\] (.*)$")

FINGERPRINT = """
import hashlib, torch
torch.manual_seed(0)
x = torch.randn(512, 128, requires_grad=True); w = torch.randn(256, 128, requires_grad=True)
y = torch.softmax(torch.nn.functional.linear(x, w), -1)
(y.log() * torch.randn_like(y)).sum().backward()
h = hashlib.sha256()
for t in (y, x.grad, w.grad):
    h.update(t.detach().numpy().tobytes())
print(h.hexdigest()[:12])
"""


def env_of(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS",
                                                             "MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    env.update(ENVIRONMENTS[name])
    env["PYTHONPATH"] = str(REPO)
    return env


def threads_of(name: str) -> int:
    return int(ENVIRONMENTS[name].get("OMP_NUM_THREADS", os.cpu_count() or 1))


def fingerprint(name: str) -> str:
    out = subprocess.run([PY, "-c", FINGERPRINT], env=env_of(name), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def parse_curve(console: str) -> list[dict[str, float]]:
    """The validation lines: [{"step": N, "val/exact_match": x, ...}, ...]."""
    curve = []
    for line in console.splitlines():
        m = STEP_LINE.match(line.strip())
        if m:
            toks = m.group(2).split()
            row: dict[str, float] = {"step": int(m.group(1))}
            row.update({k: float(v) for k, v in zip(toks[::2], toks[1::2])})
            curve.append(row)
    return curve


def hydralign(args: list[str], env_name: str, cwd: Path) -> dict:
    """Run ``python -m hydralign <args>`` in cwd; its curve, wall time, exit code and run folder."""
    cwd.mkdir(parents=True, exist_ok=True)
    run_dir = cwd / "run"
    started = time.perf_counter()
    proc = subprocess.run([PY, "-m", "hydralign", *args, f"hydra.run.dir={run_dir}"], cwd=cwd,
                          env=env_of(env_name), capture_output=True, text=True)
    wall = time.perf_counter() - started
    (cwd / "console.log").write_text(proc.stdout + proc.stderr)
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "curve": parse_curve(proc.stdout + proc.stderr),
            "run_dir": str(run_dir)}


def first_at(curve: list[dict], key: str, level: float):
    return next((r["step"] for r in curve if r.get(key, -1) >= level), None)


class Results:
    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []

    def get(self, kind: str, seed: int, env: str):
        return next((r for r in self.rows if (r["kind"], r["seed"], r["env"]) == (kind, seed, env)), None)

    def add(self, row: dict) -> None:
        with self.lock:
            self.rows.append(row)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def run_sft(results: Results, out: Path, seed: int, env: str) -> dict:
    done = results.get("sft", seed, env)
    if done:
        return done
    r = hydralign([f"seed={seed}"], env, out / f"sft_{env}_s{seed}")
    curve = r["curve"]
    row = {"kind": "sft", "seed": seed, "env": env, **r,
           "final": curve[-1].get("val/exact_match") if curve else None,
           "first_0.9": first_at(curve, "val/exact_match", 0.9),
           "max_step": curve[-1]["step"] if curve else None}
    results.add(row)
    print(f"  sft  seed {seed} {env:20s} final {row['final']}  first>=0.9 at {row['first_0.9']}  "
          f"{row['wall_s']} s  rc {row['rc']}", flush=True)
    return row


def run_pool(jobs: list[tuple[int, str]], fn, cores: int) -> None:
    """Run fn(seed, env) for each job, never more threads at once than cores."""
    free, cv = [cores], threading.Condition()

    def worker(seed: int, env: str, need: int) -> None:
        try:
            fn(seed, env)
        finally:
            with cv:
                free[0] += need
                cv.notify_all()

    threads = []
    for seed, env in jobs:
        need = min(threads_of(env), cores)
        with cv:
            cv.wait_for(lambda need=need: free[0] >= need)
            free[0] -= need
        t = threading.Thread(target=worker, args=(seed, env, need))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def run_chain(results: Results, out: Path, env: str, grpo: bool) -> None:
    sft = results.get("sft", 0, env)
    if sft is None or sft["rc"] != 0:
        print(f"  chain {env}: no successful seed-0 SFT run", flush=True)
        return
    sft_em = sft["final"]
    if results.get("dpo", 0, env) is None:
        r = hydralign(["method=dpo", f"init_from={sft['run_dir']}"], env, out / f"dpo_{env}_s0")
        last = r["curve"][-1] if r["curve"] else {}
        row = {"kind": "dpo", "seed": 0, "env": env, **r, "sft_final": sft_em,
               "final": last.get("val/exact_match"), "rewards_accuracies": last.get("val/rewards/accuracies")}
        results.add(row)
        print(f"  dpo  {env:20s} val/rewards/accuracies {row['rewards_accuracies']}  exact match "
              f"{sft_em} -> {row['final']}  {row['wall_s']} s  rc {row['rc']}", flush=True)
    if grpo and results.get("grpo", 0, env) is None:
        start = next((c for c in sft["curve"] if 0.2 <= c.get("val/exact_match", -1) <= 0.5 and c["step"] > 0), None)
        if start is None:
            print(f"  grpo {env}: no validation of the SFT run in [0.2, 0.5]: {sft['curve']}", flush=True)
            return
        r = hydralign(["method=grpo", f"init_from={sft['run_dir']}:step={start['step']}"], env,
                      out / f"grpo_{env}_s0")
        curve = r["curve"]
        row = {"kind": "grpo", "seed": 0, "env": env, **r, "from_step": start["step"],
               "start": curve[0].get("val/exact_match") if curve else None,
               "final": curve[-1].get("val/exact_match") if curve else None}
        results.add(row)
        print(f"  grpo {env:20s} from step {start['step']}: exact match {row['start']} -> {row['final']}  "
              f"{row['wall_s']} s  rc {row['rc']}", flush=True)


def seeds_arg(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def report(results: Results, seeds: list[int], envs: list[str], prints: dict[str, str]) -> None:
    print("\nfinal val exact match / first step >= 0.9 / wall s (seed x environment)")
    print("| seed | " + " | ".join(envs) + " |")
    print("|---:|" + "---|" * len(envs))
    ok_final, early, total = 0, 0, 0
    for seed in seeds:
        cells = []
        for env in envs:
            r = results.get("sft", seed, env)
            if r is None:
                cells.append("-")
                continue
            total += 1
            fin = r["final"] or 0.0
            ok_final += fin >= 0.9
            early += r["first_0.9"] is not None and r["max_step"] and r["first_0.9"] <= 0.6 * r["max_step"]
            cells.append(f"{fin:.2f} / {r['first_0.9'] or '-'} / {r['wall_s']:.0f}")
        print(f"| {seed} | " + " | ".join(cells) + " |")
    walls = [r["wall_s"] for r in results.rows if r["kind"] == "sft" and r["env"] == DEFAULT_ENV and r["seed"] in seeds
             and DEFAULT_ENV in envs]
    print(f"\nfinal >= 0.9: {ok_final} of {total} runs; >= 0.9 by 60% of the step budget: {early} of {total}"
          + (f"; wall time in {DEFAULT_ENV}: {min(walls):.0f}-{max(walls):.0f} s" if walls else ""))
    print("numeric fingerprints (a fixed forward and backward, hashed): "
          + ", ".join(f"{e} {prints[e]}" for e in envs))
    for e in envs:  # does the variable change this CPU's numbers at all? (vs the same thread count alone)
        base = f"threads{threads_of(e)}"
        if e == base or base not in prints:
            continue
        same_runs = [s for s in seeds if results.get("sft", s, e) and results.get("sft", s, base)
                     and results.get("sft", s, e)["curve"] == results.get("sft", s, base)["curve"]]
        ran = [s for s in seeds if results.get("sft", s, e) and results.get("sft", s, base)]
        print(f"  {e}: fingerprint {'the same as' if prints[e] == prints[base] else 'differs from'} {base}'s; "
              f"validation curve identical to {base}'s for {len(same_runs)} of {len(ran)} seeds")
    for a, b in (("threads1", "threads2"), ("threads2", "threads4")):
        ran = [s for s in seeds if results.get("sft", s, a) and results.get("sft", s, b)]
        if ran:
            same = [s for s in ran if results.get("sft", s, a)["curve"] == results.get("sft", s, b)["curve"]]
            print(f"  {a} vs {b}: validation curve identical for {len(same)} of {len(ran)} seeds")
    for kind in ("dpo", "grpo"):
        for r in results.rows:
            if r["kind"] == kind and r["env"] in envs:
                if kind == "dpo":
                    print(f"dpo  {r['env']:20s} val/rewards/accuracies {r['rewards_accuracies']}  val exact match "
                          f"{r['sft_final']} (sft) -> {r['final']}  {r['wall_s']:.0f} s")
                else:
                    print(f"grpo {r['env']:20s} from step {r['from_step']}: val exact match {r['start']} -> "
                          f"{r['final']} ({(r['final'] or 0) - (r['start'] or 0):+.3f}) in {r['wall_s']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--envs", default=",".join(ENVIRONMENTS))
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench" / "default_robustness"))
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chain", action="store_true", help="DPO from seed 0 in every environment, GRPO in --grpo-envs")
    ap.add_argument("--grpo-envs", default="threads1,threads2")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    seeds, envs = seeds_arg(args.seeds), args.envs.split(",")
    unknown = [e for e in envs if e not in ENVIRONMENTS]
    if unknown:
        sys.exit(f"unknown environment(s) {unknown}; known: {', '.join(ENVIRONMENTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.jsonl")
    prints = {e: fingerprint(e) for e in set(envs) | {DEFAULT_ENV}}
    if not args.report_only:
        print(f"{len(seeds)} seeds x {len(envs)} environments, {args.cores} cores; results in {out}", flush=True)
        # the 1-thread runs first (two at a time), then the rest
        jobs = sorted(((s, e) for e in envs for s in seeds), key=lambda j: (threads_of(j[1]) > 1, j[1], j[0]))
        run_pool(jobs, lambda s, e: run_sft(results, out, s, e), args.cores)
        if args.chain:
            grpo_envs = set(args.grpo_envs.split(","))
            for env in envs:
                run_chain(results, out, env, env in grpo_envs)
    report(results, seeds, envs, prints)


if __name__ == "__main__":
    main()
