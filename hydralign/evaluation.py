"""Scoring generations (pure, no torch): exact match, flexible exact match, repetition."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """Strict: the completion, stripped of surrounding whitespace, equals the reference."""
    return prediction.strip() == reference.strip()


def extract_answer(text: str) -> str:
    """Flexible extraction: the text after "answer is"/"answer:" if present, then its last number,
    else the normalized text."""
    m = _ANSWER_IS.search(text)
    if m:
        text = m.group(1)
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "").rstrip(".")
    return normalize(text)


def exact_match_flex(prediction: str, reference: str) -> bool:
    return extract_answer(prediction) == extract_answer(reference)


def is_repetitive(tokens: Sequence[int], stopped: bool, min_repeats: int = 3, max_period: int = 32) -> bool:
    """A generation that never stopped and ends in one span repeated at least ``min_repeats`` times
    back to back (DeepSeek LLM's repetition rate)."""
    if stopped:
        return False
    n = len(tokens)
    for period in range(1, max_period + 1):
        if period * min_repeats > n:
            break
        span = list(tokens[n - period:])
        if all(list(tokens[n - (r + 1) * period:n - r * period]) == span for r in range(1, min_repeats)):
            return True
    return False
