"""Rouge-L of a generated answer against its reference, as MiniLLM scores held-out instructions (DollyEval,
SelfInst, ...): ``rouge_score``'s Rouge-L F-measure with the Porter stemmer, x 100, the best over the references.

lm-eval has no such instruction set; a task YAML over local files uses this as its ``process_results``:
``process_results: !function hydralign.harness.rouge.process_results`` with
``metric_list: [{metric: rougeL, aggregation: mean, higher_is_better: true}]``.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: list[str]) -> float:
    """100 x the highest Rouge-L F-measure of ``prediction`` against any of ``references`` (0 for none)."""
    scores = [_scorer().score(ref, prediction)["rougeL"].fmeasure for ref in references if ref.strip()]
    return 100.0 * max(scores, default=0.0)


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's per-document hook: the reference is the doc's ``completion`` (or ``output``) field, a string or
    a list of strings; ``results`` holds the one generation."""
    target = doc.get("completion", doc.get("output", ""))
    references = [target] if isinstance(target, str) else [str(t) for t in target]
    return {"rougeL": rouge_l(results[0], references)}
