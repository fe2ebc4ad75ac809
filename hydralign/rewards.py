"""Verifiable rewards (RLVR): pure functions ``(completion, reference) -> float`` and their weighted sum.

``method.rewards`` maps verifier names to weights, e.g. ``{exact_answer: 1.0, format: 0.2}``. A verifier
that raises on a sample scores it 0 and is counted (``score`` returns the errors per verifier); it never
stops the run. Pure: no torch, so the plan can check names before anything heavy loads.

Per-source verifiers (Tulu 3 RLVR: GSM8K by its last number, MATH by its boxed answer): a prompt record may
carry its source in a ``dataset`` field (open-instruct's RLVR column); its answer key then is an
``AnswerKey``, a ``str`` that remembers the source, and ``method.rewards_by_source`` (source -> {verifier:
weight}) routes each sample to its source's table (without case), falling back to ``method.rewards``.
IFEval-constraint prompts: the ``ifeval`` verifier (``hydralign/rewards_ifeval.py``, lm-eval's checkers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Optional

from hydralign.errors import ConfigError
from hydralign.rewards_ifeval import ifeval

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
DEFAULT_FORMAT = r"(?s)^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"  # DeepSeek-R1's think/answer tags


SOURCE_FIELD = "dataset"  # the record field naming a prompt's source (open-instruct's RLVR data)


class AnswerKey(str):
    """A verifier's answer key that knows which source (data set) its prompt came from. A ``str`` to every
    template, tokenizer and verifier; the source rides along to the rollout, which routes on it."""

    source: Optional[str]

    def __new__(cls, text: str, source: Optional[str] = None) -> AnswerKey:
        key = super().__new__(cls, text)
        key.source = source
        return key

    def __reduce__(self):  # data-loader workers pickle it: keep the source
        return AnswerKey, (str(self), self.source)


def source_of(reference: str) -> Optional[str]:
    """The source an answer key carries (None for a plain string)."""
    return getattr(reference, "source", None)


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
    "ifeval": ifeval,  # IFEval constraints by lm-eval's checkers (hydralign/rewards_ifeval.py)
}


def check_rewards(weights: Mapping[str, float], key: str = "method.rewards") -> None:
    """Raise ConfigError (naming ``key``) for an empty table, an unknown name or a non-numeric weight."""
    if not weights:
        raise ConfigError(f"{key} is empty; give verifiers and weights, e.g. {key}="
                          f"{{exact_answer: 1.0}} (available: {', '.join(REWARDS)})")
    unknown = [n for n in weights if n not in REWARDS]
    if unknown:
        raise ConfigError(f"{key} names unknown verifiers {unknown}; choose from {', '.join(REWARDS)}")
    for name, w in weights.items():
        try:
            float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{name}={w} must be a number (its weight)") from None


def check_rewards_by_source(table: Mapping[str, Mapping[str, float]]) -> None:
    """``method.rewards_by_source``: each source a non-empty name with a table ``check_rewards`` accepts."""
    seen: dict[str, str] = {}
    for source, weights in table.items():
        key = f"method.rewards_by_source.{source}"
        if str(source).lower() in seen:  # sources match without case: one of the two would be dropped
            raise ConfigError(f"{key} and method.rewards_by_source.{seen[str(source).lower()]} name the same source "
                              "(sources match without case): keep one")
        seen[str(source).lower()] = str(source)
        if not str(source).strip():
            raise ConfigError("method.rewards_by_source has an empty source name; use the values of the records' "
                              f"'{SOURCE_FIELD}' field, e.g. method.rewards_by_source={{gsm8k: {{last_number: 1.0}}}}")
        if not isinstance(weights, Mapping):
            raise ConfigError(f"{key}={weights} must map verifiers to weights, e.g. {key}={{last_number: 1.0}}")
        check_rewards(weights, key)


def verifier_names(weights: Mapping[str, float], by_source: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every verifier any sample may be scored by: the default table's, then each source's new ones."""
    names = list(weights)
    for table in by_source.values():
        names += [n for n in table if n not in names]
    return names


def max_reward(weights: Mapping[str, float]) -> float:
    """The best total a table can give (the sum of its positive weights): what counts as fully right."""
    return sum(float(w) for w in weights.values() if float(w) > 0)


def route(sources: list[Optional[str]], weights: Mapping[str, float],
          by_source: Optional[Mapping[str, Mapping[str, float]]] = None) -> list[Mapping[str, float]]:
    """Each sample's verifier table: its source's in ``by_source``, else ``weights``. Sources compare without
    case, as open-instruct's ``dataset.lower()`` (its mixture says ``MATH``, its verifier ``math``)."""
    tables = {str(k).lower(): v for k, v in (by_source or {}).items()}
    return [tables.get(s.lower(), weights) if s is not None else weights for s in sources]


def score(completions: list[str], references: list[str], weights: Mapping[str, float],
          format_pattern: Optional[str] = None, by_source: Optional[Mapping[str, Mapping[str, float]]] = None,
          sources: Optional[list[Optional[str]]] = None
          ) -> tuple[list[float], dict[str, list[Optional[float]]], dict[str, int]]:
    """(weighted total per sample, {verifier: raw score per sample, None where the sample's table does not
    have it}, {verifier: samples it raised on}). Each sample is scored by ``route``'s table for its source
    (``sources`` default: each reference's own, see ``AnswerKey``)."""
    by_source = by_source or {}
    if sources is None:
        sources = [source_of(r) for r in references]
    tables = route(sources, weights, by_source)
    per: dict[str, list[Optional[float]]] = {}
    errors: dict[str, int] = {}
    for name in verifier_names(weights, by_source):
        fn = REWARDS[name]
        kwargs = {"pattern": format_pattern} if fn is format_reward and format_pattern else {}
        values: list[Optional[float]] = []
        bad = 0
        for completion, reference, table in zip(completions, references, tables):
            if name not in table:
                values.append(None)
                continue
            try:
                values.append(float(fn(completion, reference, **kwargs)))
            except Exception:  # a broken verifier scores 0 and is counted, never stops training
                values.append(0.0)
                bad += 1
        per[name], errors[name] = values, bad
    totals = [sum(float(w) * per[n][i] for n, w in table.items()) for i, table in enumerate(tables)]
    return totals, per, errors
