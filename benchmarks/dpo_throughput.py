"""DPO training-step throughput and memory: hydralign as users run it vs a bare PyTorch DPO loop.

hydralign's side is ``hydralign.run.job.run(cfg, callbacks=[StepTimer()])``: the Trainer as ``hydralign.run.build``
builds it (``build_trainer``: its checkpoint callbacks, StartupTimer, TokensSeen, the MLflow logger on a
private SQLite store, the progress bar), the data module, ``DPOModule`` with its frozen reference copy.
The bare loop gets the same model init, the same pairs and micro-batches (the same window schedule over
the same tokenized pairs), the same AdamW + schedule + clipping, and a live frozen copy of the initial
policy as reference, run under no_grad; its sigmoid DPO loss and sequence log-probs are written by hand
here (log_softmax + gather, ``-logsigmoid(beta * margin)``), not imported from hydralign.

Cases:
    throughput   bare vs hydralign (live reference), rounds alternate, median step time after warm-up
    precompute   hydralign live reference vs method.precompute_ref=true (fresh cache each round, so the
                 one-time precompute is measured too and reported apart)
    memory       peak RSS (ru_maxrss at the end of training, one fresh subprocess per case) of LoRA DPO
                 with the adapter-disabled reference vs the policy alone (LoRA SFT on the same sequences);
                 also full DPO (frozen copy) and full SFT, and on request the bare loop's LoRA DPO

    .venv/bin/python benchmarks/dpo_throughput.py --model tiny --steps 150
    .venv/bin/python benchmarks/dpo_throughput.py --model llama25m --steps 16
    .venv/bin/python benchmarks/dpo_throughput.py --case precompute --model tiny --steps 150
    .venv/bin/python benchmarks/dpo_throughput.py --case precompute --model llama25m --steps 16
    .venv/bin/python benchmarks/dpo_throughput.py --case memory --model llama25m --steps 4

The 32k-vocabulary model is ``model=llama25m`` (conf/model/llama25m.yaml) with ``model.tokenizer`` a
local 32,000-word tokenizer and random-token pairs of exactly 256 tokens (benchmarks/dpo_data.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import dpo_data  # noqa: E402
from hydralign.data.batching import TrainMicroBatches, WindowSchedule  # noqa: E402
from hydralign.optim.schedules import lr_factor  # noqa: E402
from tests.helpers import compose_cfg  # noqa: E402

WARMUP = 5
DATA_DIR = REPO / "outputs" / "bench" / "llama25m_data"
LOGPS = "hydralign's sequence_logps"


# --- configs ----------------------------------------------------------------------------------
def overrides_for(model: str, steps: int, extra: list[str] = ()) -> list[str]:
    """The command-line overrides of the measured run. Validation and checkpoints fall after the last
    timed step (eval.every_n_steps past max_steps; no validation at start); everything else is default."""
    sft = "method=sft" in extra
    common = [f"trainer.max_steps={steps}", "eval.at_start=false", f"eval.every_n_steps={steps + 1}"]
    common = common if sft else ["method=dpo"] + common
    if model == "tiny":
        return common + list(extra)
    # llama25m: 8 pairs per step in 2 micro-batches of 4 pairs (8 rows x 256 tokens per forward).
    paths = dpo_data.build(DATA_DIR, num_train=max(128, 8 * steps), num_val=8)
    return common + [
        "model=llama25m", f"model.tokenizer={paths['tokenizer']}", "data=jsonl", "data.max_seq_len=256",
        f"data.train_files=[{paths['sft_train' if sft else 'train']}]",
        f"data.val_files=[{paths['sft_val' if sft else 'val']}]",
        "batch.effective=8", "batch.micro=4",
        "eval.num_generate=0", "eval.batch_size=4", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
        "optimized_metric=val/loss",
    ] + list(extra)


def make_cfg(model: str, steps: int, tmp: Path, extra: list[str] = ()):
    cfg = compose_cfg(overrides_for(model, steps, extra))
    with open_dict(cfg):
        cfg.run_dir = str(tmp / "run")
        cfg.logger.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    return cfg


# --- hydralign: the run users start ---------------------------------------------------------------
class StepTimer(Callback):
    """Wall time between consecutive optimizer steps (the end of each window's last micro-batch), the
    step's loss, and the RSS high-water mark when training starts and ends."""

    def __init__(self):
        self.times, self.losses, self.t0 = [], [], None
        self.rss_start_kb = self.rss_end_kb = None

    def on_train_start(self, trainer, module):
        self.rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch["window_last"]:
            now = time.perf_counter()
            if self.t0 is not None:
                self.times.append(now - self.t0)
            self.t0 = now
            self.losses.append(float(module.last_window_loss))

    def on_train_end(self, trainer, module):
        self.rss_end_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_hydralign(cfg) -> dict:
    from hydralign.run.job import run

    timer = StepTimer()
    t0 = time.perf_counter()
    run(cfg, callbacks=[timer])
    wall = time.perf_counter() - t0
    precompute = None
    if cfg.method.get("precompute_ref"):
        from mlflow.tracking import MlflowClient

        run_id = (Path(cfg.run_dir) / "mlflow_run_id").read_text().strip()
        hist = MlflowClient(cfg.logger.tracking_uri).get_metric_history(run_id, "reference/precompute_seconds")
        precompute = hist[0].value if hist else None
    return {"times": timer.times[WARMUP - 1:], "losses": timer.losses, "wall": wall, "precompute_s": precompute,
            "rss_start_kb": timer.rss_start_kb, "rss_end_kb": timer.rss_end_kb}


# --- the bare loop ----------------------------------------------------------------------------
def load_components(cfg):
    """Tokenizer, tokenized pairs and the plan, as hydralign.run.build builds them."""
    from hydralign.data.chat import template_for
    from hydralign.data.module import PostTrainingData
    from hydralign.methods.specs import get_method
    from hydralign.models import build_tokenizer
    from hydralign.plan.core import make_plan

    spec = get_method(cfg.method.name)
    template = template_for(cfg.model.chat_template)
    tok = build_tokenizer(cfg.model, template)
    data = PostTrainingData(cfg, tok, template, kind=spec.data_kind, unit=spec.unit)
    data.load()
    plan = make_plan(cfg, num_train_examples=len(data.train_examples))
    return tok, data, plan


def seq_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label) over each row's target positions (labels -100 elsewhere), [rows]."""
    labels = labels[:, 1:]
    mask = labels != -100
    logp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def run_bare(cfg, tok, data, plan, ref_first: bool = True) -> dict:
    """The bare DPO loop. With ``cfg.peft`` LoRA the reference is the policy with its adapters
    disabled (peft's ``disable_adapter``), else a frozen deep copy. ``ref_first``: the reference's
    forward runs before the policy's (as TRL does), so its logits are freed before the policy's graph
    exists; False runs it after, like hydralign's DPOModule."""
    import contextlib

    from hydralign.models import build_model
    from hydralign.models.peft import apply_peft

    policy = apply_peft(build_model(cfg.model, tok, cfg.seed), cfg.peft).train()
    lora = cfg.peft.name != "none"
    reference = None if lora else copy.deepcopy(policy).eval().requires_grad_(False)

    def ref_logps(ids, mask, labels):
        with torch.no_grad(), (policy.disable_adapter() if lora else contextlib.nullcontext()):
            return seq_logps((policy if lora else reference)(input_ids=ids, attention_mask=mask).logits, labels)

    ocfg, scfg, beta = cfg.optimizer, cfg.schedule, cfg.method.beta
    decay = [p for p in policy.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in policy.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ocfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=plan.lr, betas=tuple(ocfg.betas),
                            eps=ocfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, scfg.name, plan.total_steps, plan.warmup_steps or 0, scfg.min_lr_ratio))
    schedule = WindowSchedule(data.units(), plan.effective_batch, plan.micro_batch, 1, 0, plan.seed)
    loader = DataLoader(TrainMicroBatches(data.train_examples, schedule, tok.pad_token_id, plan.total_steps),
                        batch_size=None)
    times, losses, window_loss, t0 = [], [], 0.0, None
    rss_start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for batch in loader:
        n = batch["real"].shape[0]  # pairs; rows are [chosen_1..n, rejected_1..n]
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if ref_first:
            ref = ref_logps(ids, mask, labels)
        logps = seq_logps(policy(input_ids=ids, attention_mask=mask).logits, labels)
        if not ref_first:
            ref = ref_logps(ids, mask, labels)
        margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
        loss = -F.logsigmoid(beta * margin).sum() / batch["window_units"]
        loss.backward()
        window_loss += loss.item()
        if batch["window_last"]:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ocfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            now = time.perf_counter()
            if t0 is not None:
                times.append(now - t0)
            t0 = now
            losses.append(window_loss)
            window_loss = 0.0
    return {"times": times[WARMUP - 1:], "losses": losses, "rss_start_kb": rss_start_kb,
            "rss_end_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def proposed_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``hydralign.losses.token_ce.sequence_logps`` with the cross-entropy over the last (vocabulary) dim
    of contiguous rows instead of the transposed ``[B, V, T-1]`` view: same values, same contract."""
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=-100, reduction="none").view_as(shift_labels)
    return -nll.sum(dim=1), (shift_labels != -100).sum(dim=1)


def patch_logps() -> None:
    """--proposed-logps: swap the proposed sequence_logps into hydralign's DPO module, in this process
    only (hydralign's files are not changed), to measure what the fix would give."""
    import hydralign.methods.dpo as dpo

    global LOGPS
    dpo.sequence_logps = proposed_sequence_logps
    LOGPS = LOGPS.replace("hydralign's sequence_logps", "the proposed sequence_logps (patched in)")


def patch_ref_first() -> None:
    """--ref-first: hydralign's DPOModule with the reference's log-probs computed before the policy's
    forward (so the reference's logits are freed before the policy's graph exists), in this process
    only: the same batch_loss, its ``_reference`` answered from the value computed first."""
    from hydralign.methods.dpo import DPOModule

    global LOGPS
    original = DPOModule.batch_loss

    def batch_loss(self, batch):
        ref = self._reference(batch, batch["real"].shape[0])
        self._reference = lambda b, n: ref  # the instance attribute shadows the method for this call
        try:
            return original(self, batch)
        finally:
            del self._reference

    DPOModule.batch_loss = batch_loss
    LOGPS += ", reference first (patched in)"


# --- cases ------------------------------------------------------------------------------------
def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def case_throughput(args) -> None:
    results = {"bare": [], "hydralign": []}
    first_losses = {}
    with tempfile.TemporaryDirectory() as root:
        cfg0 = make_cfg(args.model, args.steps, Path(root) / "probe")
        tok, data, plan = load_components(cfg0)
        for r in range(args.rounds):
            b = run_bare(cfg0, tok, data, plan)
            results["bare"] += b["times"]
            tmp = Path(root) / f"h{r}"
            h = run_hydralign(make_cfg(args.model, args.steps, tmp))
            shutil.rmtree(tmp, ignore_errors=True)
            results["hydralign"] += h["times"]
            first_losses = {"bare": b["losses"][:5], "hydralign": h["losses"][:5]}
            print(f"round {r}: bare {_median_ms(b['times']):.2f} ms, hydralign {_median_ms(h['times']):.2f} ms "
                  f"(hydralign run wall {h['wall']:.1f} s)", flush=True)
    params = sum(p.numel() for p in _build(cfg0, tok).parameters())
    print(f"model={args.model} params={params / 1e6:.2f}M pairs/step={plan.effective_batch} "
          f"micro={plan.micro_batch} accum={plan.grad_accum} steps={args.steps} rounds={args.rounds} "
          f"threads={torch.get_num_threads()}; hydralign with {LOGPS}")
    print(f"  first step losses: bare {[round(x, 6) for x in first_losses['bare']]}")
    print(f"                hydralign {[round(x, 6) for x in first_losses['hydralign']]}")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"  {k:10s} median step {v * 1000:8.2f} ms  ({1 / v:7.2f} steps/s, n={len(results[k])})")
    print(f"  ratio hydralign/bare throughput: {med['bare'] / med['hydralign']:.3f}")


def _build(cfg, tok):
    from hydralign.models import build_model

    return build_model(cfg.model, tok, cfg.seed)


def case_precompute(args) -> None:
    results = {"live": [], "precomputed": []}
    pre_s, walls = [], {"live": [], "precomputed": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            for name, extra in (("live", []), ("precomputed", ["method.precompute_ref=true"])):
                tmp = Path(root) / f"{name}{r}"
                if extra:  # a fresh cache: the one-time computation is part of every precomputed round
                    extra = extra + [f"method.ref_cache_dir={tmp / 'cache'}"]
                out = run_hydralign(make_cfg(args.model, args.steps, tmp, extra))
                shutil.rmtree(tmp, ignore_errors=True)
                results[name] += out["times"]
                walls[name].append(out["wall"])
                if out["precompute_s"] is not None:
                    pre_s.append(out["precompute_s"])
                print(f"round {r} {name}: {_median_ms(out['times']):.2f} ms/step, run wall {out['wall']:.1f} s"
                      + (f", precompute {out['precompute_s']:.2f} s" if out["precompute_s"] is not None else ""),
                      flush=True)
    cfg = make_cfg(args.model, args.steps, Path("/tmp/unused"))
    tok, data, plan = load_components(cfg)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"model={args.model} pairs/step={plan.effective_batch} micro={plan.micro_batch} accum={plan.grad_accum} "
          f"steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()} "
          f"train pairs={len(data.train_examples)} val pairs={len(data.val_examples)}; {LOGPS}")
    for k, v in med.items():
        print(f"  {k:12s} median step {v * 1000:8.2f} ms  ({1 / v:7.2f} steps/s, n={len(results[k])})")
    print(f"  ratio precomputed/live throughput: {med['live'] / med['precomputed']:.3f}")
    print(f"  one-time precompute (train + val pairs, from MLflow reference/precompute_seconds): "
          f"{', '.join(f'{s:.2f}' for s in pre_s)} s")
    saved = med["live"] - med["precomputed"]
    if saved > 0 and pre_s:
        print(f"  break-even after {statistics.median(pre_s) / saved:.0f} steps")


MEMORY_CASES = {  # name: extra overrides (llama25m; each DPO micro-batch is 4 pairs = 8 rows x 256 tokens)
    "lora_dpo": ["peft=lora"],  # reference = the policy with adapters disabled
    "lora_sft": ["method=sft", "peft=lora", "batch.effective=16", "batch.micro=8"],  # the policy alone, 8 rows
    "full_dpo": [],  # reference = a frozen copy
    "full_sft": ["method=sft", "batch.effective=16", "batch.micro=8"],
    # the bare loop (not hydralign), LoRA, adapter-disabled reference, in either order (--variants to run them)
    "bare_lora_dpo_ref_first": ["peft=lora"],
    "bare_lora_dpo_policy_first": ["peft=lora"],
}
DEFAULT_MEMORY_CASES = ["lora_dpo", "lora_sft", "full_dpo", "full_sft"]


def case_memory_one(args) -> None:
    with tempfile.TemporaryDirectory() as root:
        cfg = make_cfg(args.model, args.steps, Path(root), MEMORY_CASES[args.variant])
        if args.variant.startswith("bare_"):
            tok, data, plan = load_components(cfg)
            out = run_bare(cfg, tok, data, plan, ref_first=args.variant.endswith("ref_first"))
        else:
            out = run_hydralign(cfg)
    print("RESULT " + json.dumps({"variant": args.variant, "rss_start_kb": out["rss_start_kb"],
                                  "rss_end_kb": out["rss_end_kb"], "median_step_ms": _median_ms(out["times"])
                                  if out["times"] else None}), flush=True)


def case_memory(args) -> None:
    rows = {}
    for r in range(args.rounds):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--case", "memory-one", "--variant", variant, "--model", args.model,
                   "--steps", str(args.steps)] + (["--proposed-logps"] if args.proposed_logps else []) + (
                       ["--ref-first"] if args.ref_first else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                raise SystemExit(f"{variant} failed")
            res = json.loads(line[0][7:])
            rows.setdefault(variant, []).append(res)
            print(f"round {r} {variant}: peak RSS {res['rss_end_kb'] / 1024:.0f} MiB "
                  f"(at train start {res['rss_start_kb'] / 1024:.0f} MiB)", flush=True)
    peak = {k: statistics.median(x["rss_end_kb"] for x in v) / 1024 for k, v in rows.items()}
    start = {k: statistics.median(x["rss_start_kb"] for x in v) / 1024 for k, v in rows.items()}
    print(f"model={args.model} steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()}; {LOGPS}")
    for k in peak:
        print(f"  {k:9s} peak RSS {peak[k]:7.0f} MiB   (high-water mark at train start {start[k]:7.0f} MiB)")
    for a, b in (("lora_dpo", "lora_sft"), ("lora_dpo", "full_sft"), ("full_dpo", "full_sft"),
                 ("bare_lora_dpo_ref_first", "lora_sft"), ("bare_lora_dpo_policy_first", "lora_sft")):
        if a in peak and b in peak:
            print(f"  ratio {a} / {b}: peak {peak[a] / peak[b]:.3f}, "
                  f"above the train-start mark {(peak[a] - start[a]) / (peak[b] - start[b]):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["throughput", "precompute", "memory", "memory-one"], default="throughput")
    ap.add_argument("--model", choices=["tiny", "llama25m"], default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", choices=sorted(MEMORY_CASES), default="lora_dpo")
    ap.add_argument("--variants", nargs="+", choices=sorted(MEMORY_CASES), default=DEFAULT_MEMORY_CASES)
    ap.add_argument("--proposed-logps", action="store_true",
                    help="hydralign with the proposed sequence_logps swapped in (see patch_logps)")
    ap.add_argument("--ref-first", action="store_true",
                    help="hydralign with the reference computed before the policy (see patch_ref_first)")
    args = ap.parse_args()
    if args.proposed_logps:
        patch_logps()
    if args.ref_first:
        patch_ref_first()
    {"throughput": case_throughput, "precompute": case_precompute, "memory": case_memory,
     "memory-one": case_memory_one}[args.case](args)


if __name__ == "__main__":
    main()
