"""Synthetic random-token preference pairs and a 32,000-word tokenizer for the ~25M Llama benchmarks.

No download: the tokenizer is a word-level one built in memory (``w9`` ... ``w31999`` plus the
ChatML markers and role names), saved with ``save_pretrained`` so ``model.tokenizer=<dir>`` loads it
through ``AutoTokenizer`` like any local tokenizer. Each record's prompt and answers are random words,
one token each, so every sequence is exactly ``SEQ_LEN`` tokens (prompt 126 + answer 124 + 6 ChatML
tokens; the loss mask is on the 125 answer tokens, its closing ``<|im_end|>`` included).

    .venv/bin/python benchmarks/dpo_data.py outputs/bench/llama25m_data     # writes the files, prints them
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

VOCAB = 32000
SEQ_LEN = 256
PROMPT_WORDS = 126
ANSWER_WORDS = 124
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
ROLES = ["system", "user", "assistant"]
FIRST_WORD = len(SPECIALS) + len(ROLES)


def write_tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ROLES)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, VOCAB)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    assert len(tok) == VOCAB, len(tok)
    tok.save_pretrained(out)
    return out


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(FIRST_WORD, VOCAB)}" for _ in range(n))


def pair_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _words(rng, PROMPT_WORDS), "chosen": _words(rng, ANSWER_WORDS),
             "rejected": _words(rng, ANSWER_WORDS)} for _ in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(root: Path, num_train: int, num_val: int) -> dict[str, str]:
    """Tokenizer + DPO pairs (train/val) + the same pairs as SFT records (prompt + each answer, so an
    SFT micro-batch of 2B rows has exactly the shapes of a DPO micro-batch of B pairs). Deterministic;
    rewritten only when missing."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {"tokenizer": root / "tok32k", "train": root / f"pairs_train_{num_train}.jsonl",
             "val": root / f"pairs_val_{num_val}.jsonl", "sft_train": root / f"sft_train_{num_train}.jsonl",
             "sft_val": root / f"sft_val_{num_val}.jsonl"}
    if not (paths["tokenizer"] / "tokenizer.json").is_file():
        write_tokenizer(paths["tokenizer"])
    for split, n, seed in (("train", num_train, 0), ("val", num_val, 1)):
        if paths[split].is_file() and paths[f"sft_{split}"].is_file():
            continue
        pairs = pair_records(n, seed)
        write_jsonl(paths[split], pairs)
        write_jsonl(paths[f"sft_{split}"], [{"prompt": p["prompt"], "completion": p[k]}
                                             for p in pairs for k in ("chosen", "rejected")])
    return {k: str(v.resolve()) for k, v in paths.items()}


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench/llama25m_data"), 128, 8),
                     indent=2))
