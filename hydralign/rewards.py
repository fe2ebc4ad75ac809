"""Verifiable rewards (RLVR): pure functions ``(completion, reference) -> float`` and their weighted sum.

``method.rewards`` maps verifier names to weights, e.g. ``{exact_answer: 1.0, format: 0.2}``. A verifier
that raises on a sample scores it 0 and is counted (``score`` returns the errors per verifier); it never
stops the run. Pure: no torch, so the plan can check names before anything heavy loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Optional

from hydralign.errors import ConfigError

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
DEFAULT_FORMAT = r"(?s)^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"  # DeepSeek-R1's think/answer tags


def exact_answer(completion: str, reference: str) -> float:
    """1 when the completion, stripped, is the reference (the embedded task: the reversed sum's digits)."""
    return float(completion.strip() == reference.strip())


def _number(text: str) -> Optional[float]:
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float(found[-1].replace(",", "").rstrip("."))


def last_number(completion: str, reference: str) -> float:
    """GSM8K-style: the completion's last number equals the reference's answer (after ``####`` when the
    reference has one, else its last number); commas ignored, compared as numbers."""
    ref = reference.split("####")[-1]
    want, got = _number(ref), _number(completion)
    return float(want is not None and got is not None and abs(want - got) < 1e-9)


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (nested braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _canon(answer: str) -> str:
    return re.sub(r"\s+", "", answer).strip("$").rstrip(".")


def boxed(completion: str, reference: str) -> float:
    """The completion's last ``\\boxed{}`` equals the reference's (or the reference itself when it has no
    box), ignoring spaces and surrounding ``$``; numbers compared as numbers."""
    got = last_boxed(completion)
    if got is None:
        return 0.0
    ref = last_boxed(reference)
    want = _canon(reference if ref is None else ref)
    got = _canon(got)
    if got == want:
        return 1.0
    try:
        return float(abs(float(got.replace(",", "")) - float(want.replace(",", ""))) < 1e-9)
    except ValueError:
        return 0.0


def format_reward(completion: str, reference: str, pattern: str = DEFAULT_FORMAT) -> float:
    """1 when the whole completion matches ``pattern`` (``method.format_pattern``)."""
    return float(re.fullmatch(pattern, completion) is not None)


REWARDS: dict[str, Callable[..., float]] = {
    "exact_answer": exact_answer, "last_number": last_number, "boxed": boxed, "format": format_reward,
}


def check_rewards(weights: Mapping[str, float]) -> None:
    """Raise ConfigError for an empty table, an unknown name or a non-numeric weight."""
    if not weights:
        raise ConfigError(f"method.rewards is empty; give verifiers and weights, e.g. method.rewards="
                          f"{{exact_answer: 1.0}} (available: {', '.join(REWARDS)})")
    unknown = [n for n in weights if n not in REWARDS]
    if unknown:
        raise ConfigError(f"method.rewards names unknown verifiers {unknown}; choose from {', '.join(REWARDS)}")
    for name, w in weights.items():
        try:
            float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"method.rewards.{name}={w} must be a number (its weight)") from None


def score(completions: list[str], references: list[str], weights: Mapping[str, float],
          format_pattern: Optional[str] = None) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """(weighted total per sample, {verifier: raw score per sample}, {verifier: samples it raised on})."""
    per: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for name in weights:
        fn = REWARDS[name]
        kwargs = {"pattern": format_pattern} if fn is format_reward and format_pattern else {}
        values, bad = [], 0
        for completion, reference in zip(completions, references):
            try:
                values.append(float(fn(completion, reference, **kwargs)))
            except Exception:  # a broken verifier scores 0 and is counted, never stops training
                values.append(0.0)
                bad += 1
        per[name], errors[name] = values, bad
    totals = [sum(float(weights[n]) * per[n][i] for n in weights) for i in range(len(completions))]
    return totals, per, errors
