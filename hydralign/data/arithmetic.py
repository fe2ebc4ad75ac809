"""The embedded synthetic task: ``a+b=`` answered with the digits of the sum reversed.

Reversed digits let a left-to-right decoder emit the least significant digit first, so the carry
is always known when a digit is written; zero-padded operands put every digit at a fixed position.
Together they let a tiny model learn the task in minutes. Pairs are drawn
without repetition from one seeded stream and cut into disjoint train/val splits.
"""

from __future__ import annotations

import random

from hydralign.errors import ConfigError


def answer(a: int, b: int) -> str:
    return str(a + b)[::-1]


def make_splits(seed: int, num_train: int, num_val: int, max_digits: int,
                system_prompt: str | None = None, pad_operands: bool = True) -> dict[str, list[dict]]:
    """Return ``{"train": [...], "val": [...]}`` of chat records."""
    bound = 10**max_digits
    total = num_train + num_val
    if total > bound * bound // 2:
        raise ConfigError(f"{total} distinct sums requested (data.arithmetic.num_train + num_val) but "
                          f"data.arithmetic.max_digits={max_digits} offers only {bound * bound // 2}; raise "
                          "data.arithmetic.max_digits or lower the split sizes")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < total:
        pair = (rng.randrange(bound), rng.randrange(bound))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)

    def record(a: int, b: int) -> dict:
        width = max_digits if pad_operands else 0
        messages = [{"role": "user", "content": f"{a:0{width}d}+{b:0{width}d}="},
                    {"role": "assistant", "content": answer(a, b)}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return {"messages": messages}

    return {"train": [record(a, b) for a, b in pairs[:num_train]],
            "val": [record(a, b) for a, b in pairs[num_train:]]}


def wrong_answer(correct: str, rng: random.Random) -> str:
    """A plausible mistake: one digit of the (reversed) sum off by one, as a dropped or extra carry
    would make it; never a leading zero, never the correct answer."""
    i = rng.randrange(len(correct))
    digit = int(correct[i])
    step = rng.choice((-1, 1))
    new = (digit + step) % 10
    if i == len(correct) - 1 and new == 0 and len(correct) > 1:  # the most significant digit (reversed)
        new = (digit - step) % 10
    return correct[:i] + str(new) + correct[i + 1:]


def preference_records(records: list[dict], seed: int) -> list[dict]:
    """Chat records -> preference pairs: chosen = the right sum, rejected = a plausible wrong one."""
    rng = random.Random(seed * 1_000_003 + 17)
    out = []
    for rec in records:
        *prompt, answer = rec["messages"]
        out.append({"prompt": prompt, "chosen": answer["content"],
                    "rejected": wrong_answer(answer["content"], rng)})
    return out
