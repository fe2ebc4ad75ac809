"""TRL's SFTTrainer with ``padding_free=True`` on the files ``benchmarks/packing_throughput.py`` writes, with
the same ~25M Llama, micro-batch 8 x accumulation 2, no truncation (every record fits 1024), no activation
checkpointing (TRL defaults it on; hydralign off), AdamW, loss on the answers only.
Run in an environment with TRL installed (TRL is not a hydralign dependency):

    python -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0 transformers==5.24.0 trl
    OMP_NUM_THREADS=1 /tmp/trlvenv/bin/python benchmarks/trl_padding_free.py outputs/bench/packing --steps 8

Prints trained (non-padding) tokens per second over the optimizer steps after the warm-up ones, as TRL's
own ``num_tokens`` counter reports them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

WARMUP = 3
CHATML = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


class Timer(TrainerCallback):
    def __init__(self):
        self.marks: list[tuple[float, float]] = []  # (time, cumulative tokens) at each optimizer step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.marks.append((time.perf_counter(), float(logs["num_tokens"])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    root = Path(args.root)
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    tok.chat_template = CHATML
    rows = []
    for line in (root / "train.jsonl").read_text().splitlines():
        user, assistant = json.loads(line)["messages"]
        rows.append({"prompt": [user], "completion": [assistant]})
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=512, num_hidden_layers=8,
                                         num_attention_heads=8, intermediate_size=1376, max_position_embeddings=1024,
                                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                                         attn_implementation="sdpa"))
    cfg = SFTConfig(output_dir=str(root / "trl_out"), padding_free=True, max_length=None, gradient_checkpointing=False,
                    per_device_train_batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-3,
                    max_steps=args.steps, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                    dataloader_num_workers=0, completion_only_loss=True, bf16=False, fp16=False, seed=0)
    timer = Timer()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[timer])
    trainer.train()
    (t0, n0), (t1, n1) = timer.marks[WARMUP - 1], timer.marks[-1]
    steps = len(timer.marks) - WARMUP
    print(f"TRL SFTTrainer padding_free: {(n1 - n0) / (t1 - t0):.0f} tokens/s over {steps} steps "
          f"({(t1 - t0) / steps:.2f} s per step, {(n1 - n0) / steps:.0f} tokens per step)")


if __name__ == "__main__":
    main()
