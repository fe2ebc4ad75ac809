"""The ``ifeval`` verifier: IFEval-constraint prompts (Tulu 3 RLVR) scored by lm-eval's own IFEval instruction
checkers (``lm_eval/tasks/ifeval/instructions.py``, Google's IFEval code; open-instruct's verifier derives from the
same code). Registered in ``hydralign.rewards.REWARDS``; routed to a prompt by its source, e.g.
``method.rewards_by_source={ifeval: {ifeval: 1.0}}``.

The answer key names the instructions and their arguments, as a dict, JSON or a Python literal, in one of the forms
the data sets write:
- IFEval's: ``{"instruction_id_list": ["punctuation:no_comma", ...], "kwargs": [{...}, ...]}`` (google/IFEval);
- open-instruct's: ``{"instruction_id": [...], "kwargs": [...]}``, alone or first in a list (``"[{...}]"``);
- open-instruct's older one-check form, which Tulu 3's RLVR mixture uses: ``{"func_name": "validate_lowercase",
  <its arguments>}``, translated into the lm-eval instruction(s) that check the same thing (``_FUNC``); an exact
  or "around" count becomes two of lm-eval's bounds ("at least" and "less than").

Reward (strict, IFEval's prompt-level strict accuracy): 1.0 when the response, stripped, is not empty and every
instruction's checker says it is followed, else 0.0 (open-instruct averages over the instructions instead).

A verifier that raises scores the sample 0 and is counted (``rewards/ifeval/errors``). This one raises
``Unscorable`` (with the reason) for:
- ``length_constraints:number_sentences`` and ``change_case:capital_word_frequency`` while nltk's ``punkt_tab``
  tokenizer data is absent: lm-eval's checkers tokenize with it, and nltk downloads it from GitHub, which an
  offline machine cannot reach (``NEEDS_PUNKT``; put it under ``$NLTK_DATA`` to score them). The other 23
  checkers need no data file: the three language checks (``language:response_language``,
  ``change_case:english_capital``, ``change_case:english_lowercase``) use ``langdetect``, whose language profiles
  ship inside its pip package (made deterministic here: ``DetectorFactory.seed = 0``);
- an instruction whose arguments the answer key does not fully give (lm-eval would draw them at random);
- a ``func_name`` with no lm-eval counterpart (``UNTRANSLATABLE``).
``unscorable_reasons`` counts these over a data set before training (``GRPOModule.check_data`` prints them).
"""

from __future__ import annotations

import ast
import functools
import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

NEEDS_PUNKT = {"length_constraints:number_sentences": "nltk's punkt_tab sentence tokenizer",
               "change_case:capital_word_frequency": "nltk's punkt_tab word tokenizer"}
UNTRANSLATABLE = {
    "validate_choice": "its options are the prompt's own; lm-eval's constrained_response checks three fixed ones",
    "verify_paragraph_count": "its divider is '* * *'; lm-eval's number_paragraphs splits on '***'",
}


class Unscorable(ValueError):
    """An answer key this verifier cannot score, and why."""


def ifeval(completion: str, reference: str) -> float:
    """1.0 when ``completion`` follows every instruction ``reference`` names (lm-eval's strict test), else 0.0."""
    checkers = _checkers(str(reference))
    if not completion.strip():
        return 0.0
    return float(all(checker.check_following(completion) for checker in checkers))


def unscorable_reasons(references: Iterable[str]) -> Counter:
    """How many of ``references`` this verifier refuses, by reason (empty when it scores them all)."""
    found: Counter = Counter()
    for reference in references:
        try:
            _checkers(str(reference))
        except Unscorable as err:
            found[str(err)] += 1
    return found


def constraints(reference: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[(lm-eval instruction id, its arguments), ...]`` an answer key asks for (None arguments dropped)."""
    key = _parse(reference)
    if isinstance(key, list) and key:
        key = _parse(key[0])
    if not isinstance(key, dict):
        raise Unscorable(f"an IFEval answer key is a dict with instruction_id_list and kwargs, not {type(key).__name__}")
    if "func_name" in key:
        return _translate(str(key["func_name"]), {k: v for k, v in key.items() if k != "func_name" and v is not None})
    ids = key.get("instruction_id_list", key.get("instruction_id"))
    if not isinstance(ids, list) or not ids:
        raise Unscorable(f"an IFEval answer key needs instruction_id_list (or instruction_id); found keys {sorted(key)}")
    kwargs = key.get("kwargs") or [{}] * len(ids)
    if len(kwargs) != len(ids):
        raise Unscorable(f"{len(ids)} instruction ids but {len(kwargs)} kwargs")
    return [(str(i), {k: v for k, v in (kw or {}).items() if v is not None}) for i, kw in zip(ids, kwargs)]


def _parse(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise Unscorable(f"not JSON or a Python literal: {value[:80]!r}") from None


def _translate(func: str, a: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """open-instruct's one-check form -> lm-eval instructions checking the same constraint."""
    if func in UNTRANSLATABLE:
        raise Unscorable(f"func_name {func}: no lm-eval checker ({UNTRANSLATABLE[func]})")
    if func not in _FUNC:
        raise Unscorable(f"func_name {func} is not one of open-instruct's IFEval functions ({', '.join(sorted(_FUNC))})")
    try:
        return _FUNC[func](a)
    except KeyError as err:
        raise Unscorable(f"func_name {func} needs argument {err}; given {sorted(a)}") from None


def _count_bounds(ident: str, n_key: str, rel_key: str, n: int, quantifier: str, tolerance: int
                  ) -> list[tuple[str, dict[str, Any]]]:
    """A count 'at least' / 'at most' / 'around' / exactly (quantifier None) ``n`` as lm-eval's two relations:
    ``at least`` lo and ``less than`` hi + 1."""
    lo, hi = {"at least": (n, None), "at most": (None, n), "around": (n - tolerance, n + tolerance),
              None: (n, n)}.get(quantifier, ("bad", None))
    if lo == "bad":
        raise Unscorable(f"quantifier {quantifier!r} is not at least / at most / around")
    out = []
    if lo is not None and lo > 0:
        out.append((ident, {n_key: lo, rel_key: "at least"}))
    if hi is not None:
        out.append((ident, {n_key: hi + 1, rel_key: "less than"}))
    return out


def _around(n: int) -> int:
    return max(round(n * 0.1), 1)  # open-instruct's tolerance for 'around' a word count


_FUNC = {  # open-instruct's if_functions.py names (its argument names) -> lm-eval's instruction ids and arguments
    "verify_keywords": lambda a: [("keywords:existence", {"keywords": a["keyword_list"]})],
    "verify_keyword_frequency": lambda a: [(i, {"keyword": a["word"], **kw}) for i, kw in _count_bounds(
        "keywords:frequency", "frequency", "relation", int(a["N"]), None, 0)],
    "validate_forbidden_words": lambda a: [("keywords:forbidden_words", {"forbidden_words": a["forbidden_words"]})],
    "verify_letter_frequency": lambda a: [(i, {"letter": a["letter"], **kw}) for i, kw in _count_bounds(
        "keywords:letter_frequency", "let_frequency", "let_relation", int(a["N"]), None, 0)],
    "validate_response_language": lambda a: [("language:response_language", {"language": a["language"]})],
    "validate_word_constraint": lambda a: _count_bounds("length_constraints:number_words", "num_words", "relation",
                                                        int(a["N"]), a["quantifier"], _around(int(a["N"]))),
    "verify_sentence_constraint": lambda a: _count_bounds("length_constraints:number_sentences", "num_sentences",
                                                          "relation", int(a["N"]), a["quantifier"], 1),
    "validate_paragraphs": lambda a: [("length_constraints:nth_paragraph_first_word", {
        "num_paragraphs": int(a["N"]), "nth_paragraph": int(a["i"]), "first_word": a["first_word"]})],
    "verify_postscript": lambda a: [("detectable_content:postscript", {"postscript_marker": a["postscript_marker"]})],
    "validate_placeholders": lambda a: [("detectable_content:number_placeholders", {"num_placeholders": int(a["N"])})],
    "verify_bullet_points": lambda a: [("detectable_format:number_bullet_lists", {"num_bullets": int(a["N"])})],
    "validate_title": lambda a: [("detectable_format:title", {})],
    "validate_highlighted_sections": lambda a: [("detectable_format:number_highlighted_sections",
                                                 {"num_highlights": int(a["N"])})],
    "validate_sections": lambda a: [("detectable_format:multiple_sections", {
        "section_spliter": a["section_splitter"], "num_sections": int(a["N"])})],
    "validate_json_format": lambda a: [("detectable_format:json_format", {})],
    "validate_repeat_prompt": lambda a: [("combination:repeat_prompt", {"prompt_to_repeat": a["original_prompt"]})],
    "validate_two_responses": lambda a: [("combination:two_responses", {})],
    "validate_uppercase": lambda a: [("change_case:english_capital", {})],
    "validate_lowercase": lambda a: [("change_case:english_lowercase", {})],
    "validate_frequency_capital_words": lambda a: _count_bounds(
        "change_case:capital_word_frequency", "capital_frequency", "capital_relation", int(a["N"]), a["quantifier"],
        _around(int(a["N"]))),
    "validate_end": lambda a: [("startend:end_checker", {"end_phrase": a["end_phrase"]})],
    "validate_quotation": lambda a: [("startend:quotation", {})],
    "validate_no_commas": lambda a: [("punctuation:no_comma", {})],
}


@functools.lru_cache(maxsize=4096)  # a prompt's key is scored once per generation: built once
def _checkers(reference: str) -> tuple[Any, ...]:
    registry = _registry()
    missing = _missing_resources()
    built = []
    for ident, kwargs in constraints(reference):
        if ident not in registry:
            raise Unscorable(f"{ident} is not an lm-eval IFEval instruction")
        if ident in missing:
            raise Unscorable(f"{ident} needs {missing[ident]}, absent (offline: nltk cannot download it)")
        built.append(_build(registry[ident], ident, kwargs))
    return tuple(built)


def _build(cls: type, ident: str, kwargs: dict[str, Any]) -> Any:
    """lm-eval's checker with ``kwargs``; refused when it had to draw an argument at random (one the answer key
    does not give, or gives in a form the checker replaces: built under two seeds, the arguments differ), since a
    reward must not change from one call to the next."""
    state = random.getstate()
    try:
        made = []
        for seed in (1, 2):
            random.seed(seed)
            checker = cls(ident)
            try:
                checker.build_description(**kwargs)
            except (TypeError, ValueError) as err:
                raise Unscorable(f"{ident} refuses the arguments {kwargs}: {err}") from None
            made.append(checker)
    finally:
        random.setstate(state)
    first, second = (m.get_instruction_args() or {} for m in made)
    if first != second or not set(first) <= set(kwargs):
        raise Unscorable(f"{ident}: the answer key gives {kwargs}, not every argument it checks ({sorted(first)})")
    return made[0]


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, type]:
    """lm-eval's ``INSTRUCTION_DICT`` (its import tries once to download punkt_tab; offline that fails, harmlessly)."""
    import langdetect
    from lm_eval.tasks.ifeval import instructions_registry

    langdetect.DetectorFactory.seed = 0  # langdetect samples: seeded, a language check answers the same each call
    return dict(instructions_registry.INSTRUCTION_DICT)


@functools.lru_cache(maxsize=1)
def _missing_resources() -> dict[str, str]:
    """The checkers whose data file is not on this machine: {instruction id: what it needs}."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return dict(NEEDS_PUNKT)
    return {}


def check_references(references: list[str], weight_key: str) -> None:
    """Before training, over the train prompts routed to ``ifeval``: refused (ConfigError) when it can score none of
    them (a source routed to it by mistake); else each reason it refuses some for is printed with its count (those
    samples score 0 and count in ``rewards/ifeval/errors``)."""
    from hydralign.errors import ConfigError

    reasons = unscorable_reasons(references)
    refused = sum(reasons.values())
    if not references or refused < len(references):
        for reason, n in reasons.most_common():
            print(f"ifeval verifier: {n} of {len(references)} train prompts score 0: {reason}", flush=True)
        return
    first, n = reasons.most_common(1)[0]
    raise ConfigError(f"{weight_key} routes {len(references)} train prompts to the ifeval verifier, which can score "
                      f"none of them ({n}: {first}); route it only to IFEval-constraint prompts, e.g. "
                      "method.rewards_by_source={ifeval: {ifeval: 1.0}}")
