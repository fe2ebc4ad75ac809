"""Peak memory of the loss: the LM head + cross-entropy as SFT runs it by default (full logits, ``token_nll_sum``)
vs chunked (``model.loss_chunk_size``, hydralign/losses/chunked_ce.py), forward and backward, fp32 on CPU.

Vocabulary 128,256 (Llama 3), sequence 2048, micro batch 1, every position a target (the worst case for both).
Measured with ``torch.profiler`` (``profile_memory=True``): the peak of the running sum of every CPU tensor
allocation and free during one forward + backward of the loss, in time order, above what existed before (the
hidden states and the head weight). Reported with and without the head weight's gradient ([V, H] fp32, produced
by both paths and counted by the plan's estimate under gradients). Each path runs in a fresh process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/chunked_ce.py --hidden 2048 --chunk 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(args) -> None:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.memory_estimate import peak_tensor_bytes
    from hydralign.losses.chunked_ce import chunked_token_nll_sum
    from hydralign.losses.token_ce import token_nll_sum

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.micro, args.seq, args.hidden, generator=g, requires_grad=True)
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * 0.02).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.micro, args.seq), generator=g)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if args.path == "unchunked":
            loss, _ = token_nll_sum(F.linear(hidden, weight), labels)
        else:
            loss, _ = chunked_token_nll_sum(hidden, weight, labels, args.chunk)
        loss.backward()
    seconds = time.perf_counter() - started
    peak, _ = peak_tensor_bytes(prof)
    print("RESULT " + json.dumps({"path": args.path, "peak": peak, "weight_grad": weight.grad.numel() * 4,
                                  "loss": float(loss), "seconds": seconds}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro", type=int, default=1)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--path", default="unchunked")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    results = {}
    for path in ("unchunked", "chunked"):
        cmd = [sys.executable, __file__, "--worker", "--path", path] + [
            f"--{k}={getattr(args, k)}" for k in ("vocab", "seq", "micro", "hidden", "chunk")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        results[path] = json.loads(line[0][7:])
    u, c = results["unchunked"], results["chunked"]
    mib = 2**20
    print(f"vocab {args.vocab}, seq {args.seq}, micro {args.micro}, hidden {args.hidden}, chunk {args.chunk} (fp32, CPU)")
    print("| path | peak of the loss | without the head's weight gradient | loss | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("unchunked (full logits)", u), (f"chunked ({args.chunk})", c)):
        print(f"| {name} | {r['peak'] / mib:.0f} MiB | {(r['peak'] - r['weight_grad']) / mib:.0f} MiB | "
              f"{r['loss']:.4f} | {r['seconds']:.1f} |")
    print(f"chunked / unchunked: {c['peak'] / u['peak']:.3f} (with the weight gradient), "
          f"{(c['peak'] - c['weight_grad']) / (u['peak'] - u['weight_grad']):.3f} (without)")


if __name__ == "__main__":
    main()
