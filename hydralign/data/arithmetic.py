"""The embedded synthetic task: ``a+b=`` answered with the digits of the sum reversed.

By default every number is written least significant digit first, operands zero-padded to
``max_digits``: ``7 + 42`` is ``700+240=`` and its answer ``94`` (49). Three choices make learning a
matter of steps, not of chance (benchmarks/RESULTS.md, "Default job learns on every machine"):

- the answer reversed: a left-to-right decoder emits the units digit first, so the carry is known
  when each digit is written;
- the operands reversed too (``reverse_operands``): answer digit k sits at the same distance from
  operand digits k for every k, so one attention pattern serves every digit, learned once;
- half the training pairs with balanced digit counts (``balanced_fraction``: each operand of such a
  pair is 1, 2, ... max_digits digits long equally often, where uniform values make 90% of them
  max_digits long). An answer digit is (a_k + b_k + carry) mod 10, which one operand digit alone
  says nothing about when the digits are uniform: the gradient that would teach the model where to
  look is then zero to first order, and the run sits on a loss plateau until the summation order of
  some machine lets it off. Short operands make b_k = 0 common, so a_k alone predicts the answer
  digit and the attention is learned directly; the other half, full-length pairs, teaches the long
  carry chains that the val split (uniform) is made of. All pairs balanced left the plateau as fast
  but took longer over those carries; none balanced is the old coin flip.

Pairs are drawn without repetition from one seeded stream and cut into disjoint train/val splits;
the val split is drawn uniformly over all pairs (most operands max_digits long), the task as asked.
"""

from __future__ import annotations

import random

from hydralign.errors import ConfigError


def answer(a: int, b: int) -> str:
    return str(a + b)[::-1]


def operand(bound_digits: int, rng: random.Random, balance: bool) -> int:
    """Uniform over 0 .. 10**bound_digits - 1, or (balance) its digit count uniform in 1..bound_digits first."""
    if not balance:
        return rng.randrange(10**bound_digits)
    n = rng.randint(1, bound_digits)
    return rng.randrange(10 ** (n - 1) if n > 1 else 0, 10**n)


def check_balanced_fraction(fraction: float) -> None:
    """The plan calls this before anything loads; make_splits again for direct callers."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"data.arithmetic.balanced_fraction={fraction} must be in [0, 1] (the share of train "
                          "pairs with balanced digit counts)")


def make_splits(seed: int, num_train: int, num_val: int, max_digits: int,
                system_prompt: str | None = None, pad_operands: bool = True,
                reverse_operands: bool = True, balanced_fraction: float = 0.5) -> dict[str, list[dict]]:
    """Return ``{"train": [...], "val": [...]}`` of chat records."""
    check_balanced_fraction(balanced_fraction)
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
        # val (the last num_val pairs) stays uniform over all pairs: the task as asked
        balance = len(pairs) < num_train and rng.random() < balanced_fraction
        pair = (operand(max_digits, rng, balance), operand(max_digits, rng, balance))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)

    def record(a: int, b: int) -> dict:
        width = max_digits if pad_operands else 0
        x, y = f"{a:0{width}d}", f"{b:0{width}d}"
        if reverse_operands:
            x, y = x[::-1], y[::-1]
        messages = [{"role": "user", "content": f"{x}+{y}="},
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
