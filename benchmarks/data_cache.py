"""The tokenized-data cache at sweep scale (issue 20): a 200k-conversation chat JSONL with chat-like lengths
(``benchmarks.packing_throughput.write_data``: log-normal, median ~120 words, up to 1,008) tokenized by the local
32k word-level tokenizer the benchmarks use (``benchmarks.dpo_data.write_tokenizer``), on the tiny model with that
vocabulary, so the data stage dominates each job.

1. The grid: ``python -m hydralign -m lr=<6 values>`` into a fresh cache folder; each job's data stage (its
   ``data stage: ... in X s`` line; the MLflow metric ``data/prepare_seconds``). Target: later jobs <= 0.1 x the first.
2. One process per job, ``data.cache=false`` vs a miss vs a hit: data-stage seconds and the process's peak RSS.
3. Two ranks (``hardware=cpu_2proc``) the same three ways: each rank's peak RSS and, sampled from /proc while the job
   runs, each rank's resident (Rss) and proportional (Pss) share of the cache files it maps, and its whole Pss.
4. Bitwise: 20 steps on a hit and with ``data.cache=false`` in this process, every ``train/loss`` compared with ==.

    OMP_NUM_THREADS=1 flock /tmp/hydralign-heavy.lock .venv/bin/python -m benchmarks.data_cache [--n 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.packing_throughput import write_data

ROOT = Path("outputs/bench/data_cache").resolve()
LRS = ["1e-4", "2e-4", "3e-4", "5e-4", "1e-3", "2e-3"]
STAGE = re.compile(r"data stage: (.*?) in ([0-9.]+) s")


def common(files: dict[str, str], cache_dir: Path) -> list[str]:
    return ["data=jsonl", f"data.train_files=[{files['train']}]", "data.val_fraction=0.001", "data.max_seq_len=1024",
            f"data.cache_dir={cache_dir}", f"model.tokenizer={files['tokenizer']}", "model.chat_template=chatml",
            "model.max_position_embeddings=1024", "batch.effective=8", "batch.micro=1", "trainer.max_steps=3",
            "eval.every_n_steps=3", "eval.at_start=false", "eval.num_generate=2", "eval.max_new_tokens=2",
            "trainer.limit_val_batches=2", "eval.batch_size=2", "logger=none", "checkpoint.export_hf=false",
            "trainer.enable_progress_bar=false"]


def stages(text: str) -> list[tuple[str, float]]:
    return [(m.group(1).split(":")[0], float(m.group(2))) for m in STAGE.finditer(text)]


class Sampler(threading.Thread):
    """Every 0.2 s, for every descendant of ``root``: peak RSS (VmHWM), whole Pss, and Rss / Pss of its mappings
    under ``mapped``; the largest seen of each, per process."""

    def __init__(self, root: int, mapped: Path):
        super().__init__(daemon=True)
        self.root, self.mapped, self.stop, self.seen = root, str(mapped), threading.Event(), {}

    def _pids(self) -> list[int]:
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            todo += [int(k) for k in kids]
        return out

    def _read(self, pid: int) -> dict[str, float]:
        status = Path(f"/proc/{pid}/status").read_text()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        pss = int(re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M).group(1)) / 1024
        rss_map = pss_map = 0.0
        inside = False
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = self.mapped in line
            elif inside and line.startswith(("Rss:", "Pss:")):
                value = int(line.split()[1]) / 1024
                rss_map, pss_map = (rss_map + value, pss_map) if line.startswith("Rss") else (rss_map, pss_map + value)
        return {"peak_rss_mib": hwm, "pss_mib": pss, "mapped_rss_mib": rss_map, "mapped_pss_mib": pss_map}

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in self._pids():
                try:
                    now = self._read(pid)
                except (OSError, AttributeError):
                    continue
                best = self.seen.setdefault(pid, now)
                for k, v in now.items():
                    best[k] = max(best[k], v)
            time.sleep(0.2)


def job(args: list[str], cwd: Path, mapped: Path) -> dict:
    """One ``python -m hydralign`` process: its data stages, wall time, peak RSS (its own, and per descendant)."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "hydralign", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid, mapped)
    sampler.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(out[-4000:])
    return {"stages": stages(out), "wall_s": time.time() - started, "peak_rss_mib": usage.ru_maxrss / 1024,
            "procs": list(sampler.seen.values()), "out": out}


def grid(files: dict[str, str], work: Path) -> dict:
    cache = work / "grid_cache"
    out = job(["-m", f"lr={','.join(LRS)}", *common(files, cache), f"hydra.sweep.dir={work / 'grid'}"], work, cache)
    return {"stages": out["stages"], "wall_s": out["wall_s"]}


def single(files: dict[str, str], work: Path, hardware: str) -> dict:
    cache = work / f"cache_{hardware}"
    shutil.rmtree(cache, ignore_errors=True)
    rows = {}
    for name, extra in (("data.cache=false", ["data.cache=false"]), ("miss", []), ("hit", [])):
        folder = work / f"run_{hardware}_{len(rows)}"
        res = job([f"hardware={hardware}", *common(files, cache), *extra, f"hydra.run.dir={folder}"], work, cache)
        ranks = [p for p in res["procs"] if p["peak_rss_mib"] > 200]  # the rank processes (not the tiny launcher)
        rows[name] = {"data_stage_s": res["stages"][0][1], "process_peak_rss_mib": res["peak_rss_mib"],
                      "wall_s": res["wall_s"], "ranks": ranks}
        shutil.rmtree(folder, ignore_errors=True)
    return rows


STAGE_ONLY = """
import json, resource, sys, time
from pathlib import Path
from hydralign.data.module import PostTrainingData
from hydralign.models import tokenizer_and_template
from tests.helpers import compose_cfg
def rss():
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
cfg = compose_cfg(sys.argv[1:])
tokenizer, template = tokenizer_and_template(cfg.model)
before, t = rss(), time.time()
data = PostTrainingData(cfg, tokenizer, template)
data.load()
seconds = time.time() - t
units = data.units()  # what the schedule reads of every example
print(json.dumps({"seconds": seconds, "rss_before_mib": before, "rss_after_mib": rss(),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train": len(data.train_examples), "hit": (data.prepared.cache or {}).get("hit")}))
"""


def stage_only(files: dict[str, str], work: Path) -> dict:
    """The data stage alone, in its own process (tokenizer and imports loaded first): seconds and memory."""
    cache = work / "cache_stage"
    rows = {}
    for name, extra in (("data.cache=false", ["data.cache=false"]), ("miss", []), ("hit", [])):
        out = subprocess.run([sys.executable, "-c", STAGE_ONLY, *common(files, cache), *extra], cwd=Path.cwd(),
                             capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def bitwise(files: dict[str, str], work: Path) -> dict:
    """20 steps on a hit and with data.cache=false in this process: every step's loss compared with ==."""
    from omegaconf import OmegaConf

    from hydralign.run.job import run
    from tests.helpers import compose_cfg
    from tests.integration.test_data_cache_runs import Steps

    losses = {}
    for name, extra in (("hit", []), ("off", ["data.cache=false"])):
        args = [a for a in common(files, work / "cache_cpu") if not a.startswith(("trainer.max_steps", "eval.every"))]
        cfg = compose_cfg(args + extra + ["trainer.max_steps=20", "eval.every_n_steps=20"])
        OmegaConf.set_struct(cfg, False)
        cfg.run_dir = str(work / f"bitwise_{name}")
        steps = Steps()
        run(cfg, callbacks=[steps])
        losses[name] = steps.losses
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return {"steps": len(losses["off"]), "identical": losses["hit"] == losses["off"], "first": losses["off"][:3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--parts", default="grid,stage,single,ranks,bitwise")
    args = parser.parse_args()
    data_dir = ROOT / f"chat_{args.n}"
    if not (data_dir / "train.jsonl").is_file():
        t = time.time()
        write_data(data_dir, args.n, seed=0)
        print(f"wrote {data_dir / 'train.jsonl'} in {time.time() - t:.0f} s", flush=True)
    files = {"train": str(data_dir / "train.jsonl"), "tokenizer": str(data_dir / "tokenizer")}
    work = ROOT / f"work_{args.n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = {"n": args.n, "jsonl_mib": Path(files["train"]).stat().st_size / 2**20,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    parts = args.parts.split(",")
    if "grid" in parts:
        results["grid"] = grid(files, work)
        print(json.dumps(results["grid"]), flush=True)
    if "stage" in parts:
        results["stage"] = stage_only(files, work)
        print(json.dumps(results["stage"]), flush=True)
    if "single" in parts:
        results["single"] = single(files, work, "cpu")
        print(json.dumps(results["single"]), flush=True)
    if "ranks" in parts:
        results["ranks"] = single(files, work, "cpu_2proc")
        print(json.dumps(results["ranks"]), flush=True)
    if "bitwise" in parts:
        results["bitwise"] = bitwise(files, work)
        print(json.dumps(results["bitwise"]), flush=True)
    cache = next((p for p in work.glob("grid_cache/*") if p.is_dir()), None)
    results["cache_mib"] = sum(f.stat().st_size for f in cache.iterdir()) / 2**20 if cache else None
    (ROOT / f"results_{args.n}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1), flush=True)


if __name__ == "__main__":
    main()
