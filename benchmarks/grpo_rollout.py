"""GRPO rollout throughput: sampling with the KV cache vs without (issue 11 target: >= 3x at 32 new tokens),
with HF ``generate`` as ``GRPOModule._sample`` calls it (left-padded prompts, the full distribution: top_k 0,
top_p 1). The generation vs training seconds of a step are logged by every GRPO run (time/generation_s,
time/training_s).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_rollout.py --model tiny --rounds 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_rollout.py --model llama25m --rounds 3

Each round samples ``--prompts`` x ``--generations`` completions of exactly ``--new-tokens`` tokens
(``min_new_tokens`` forces the length, so both sides generate the same number of tokens); the median over
rounds is reported, the cached and uncached rounds alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydralign.data.arithmetic import make_splits  # noqa: E402
from hydralign.data.chat import template_for  # noqa: E402
from hydralign.data.tokenize import generation_examples  # noqa: E402
from hydralign.models import build_tokenizer  # noqa: E402
from hydralign.models.policy import build_model  # noqa: E402
from tests.helpers import tiny_cfg  # noqa: E402


def sample_seconds(model, tokenizer, prompts, generations: int, new_tokens: int, use_cache: bool) -> float:
    rows = [p for p in prompts for _ in range(generations)]
    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=use_cache,
                             pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    assert out.shape[1] - width == new_tokens
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = tiny_cfg(Path(tempfile.mkdtemp()), [f"model={args.model}", "method=grpo"])
    template = template_for(cfg.model.chat_template)
    tokenizer = build_tokenizer(cfg.model, template)
    model = build_model(cfg.model, tokenizer, 0).eval()
    convs = [r["messages"] for r in make_splits(0, args.prompts, 1, 3)["train"]]
    prompts = [e.prompt_ids for e in generation_examples(tokenizer, template, convs)]
    sample_seconds(model, tokenizer, prompts[:2], 2, 4, True)  # warm-up
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for cache in (True, False):
            times[cache].append(sample_seconds(model, tokenizer, prompts, args.generations, args.new_tokens, cache))
    tokens = args.prompts * args.generations * args.new_tokens
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({"model": args.model, "samples": args.prompts * args.generations, "new_tokens": args.new_tokens,
                      "cached_s": round(cached, 3), "uncached_s": round(uncached, 3),
                      "cached_tokens_per_s": round(tokens / cached), "uncached_tokens_per_s": round(tokens / uncached),
                      "speedup": round(uncached / cached, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
