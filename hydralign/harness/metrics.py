"""lm-eval's results as MLflow names (pure: no torch, no lm-eval import).

lm-eval keys a task's metrics ``<metric>,<filter>`` (``exact_match,strict-match``, ``acc,none``) beside their
``<metric>_stderr,<filter>``; hydralign logs them as ``eval/<task>/<metric>`` with ``_<filter>`` appended when the
filter is not ``none`` (``eval/gsm8k/exact_match_strict-match``), stderr left out, and every character MLflow
(through Lightning's logger) would drop replaced by ``_``.
"""

from __future__ import annotations

import math
import re
from typing import Any

PREFIX = "eval"
# Tags of the MLflow runs ``python -m hydralign.evaluate`` makes (hydralign.harness.standalone), read by the report.
ENTRY_TAG = "entry"  # "evaluate": a checkpoint evaluated, nothing trained
SOURCE_STEP_TAG = "source_step"  # the optimizer step of the weights evaluated
_REFUSED = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow allows these (and ':', which Lightning's logger strips)


def safe_name(name: str) -> str:
    """``name`` with every character MLflow or Lightning's MLFlowLogger would refuse replaced by ``_``."""
    return _REFUSED.sub("_", name)


def metric_name(task: str, key: str) -> str | None:
    """``eval/<task>/<metric>[_<filter>]`` for one of lm-eval's result keys; None for what is not a metric
    (``alias``, ``samples``) or a standard error."""
    metric, sep, filt = key.partition(",")
    if not sep or metric.endswith("_stderr"):
        return None
    name = metric if filt in ("", "none") else f"{metric}_{filt}"
    return safe_name(f"{PREFIX}/{task}/{name}")


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """Every task's (and group's) metrics from ``simple_evaluate``'s answer as ``{eval/<task>/<name>: value}``;
    values that are not finite numbers (lm-eval's ``N/A``) are left out."""
    out: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, row in (results.get(section) or {}).items():
            for key, value in row.items():
                name = metric_name(task, key)
                if name is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(float(value)):
                    out[name] = float(value)
    return out


def sample_counts(results: dict[str, Any]) -> dict[str, int]:
    """Examples each task scored (lm-eval's ``n-samples``: ``effective`` after ``limit``)."""
    counts = {}
    for task, n in (results.get("n-samples") or {}).items():
        counts[task] = int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
    return counts


def run_params(results: dict[str, Any], version: str) -> dict[str, str]:
    """Params logged once per run: lm-eval's version and each task's sample count and task version."""
    params = {"harness.lm_eval_version": version}
    for task, n in sample_counts(results).items():
        params[safe_name(f"harness.n_samples.{task}")] = str(n)
    for task, v in (results.get("versions") or {}).items():
        if v is not None:
            params[safe_name(f"harness.task_version.{task}")] = str(v)
    return params
