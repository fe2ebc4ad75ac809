"""What a launched job's return means for its trial: COMPLETE with its value(s), PRUNED, or FAIL with
a reason; and the message shown when too many trials of a batch failed."""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException

State = optuna.trial.TrialState


@dataclass
class Outcome:
    state: State
    values: Optional[list[float]] = None
    reason: str = ""  # FAIL: one line; PRUNED: the job's message
    error: Optional[BaseException] = None  # the job's own exception, when it raised one


def to_values(value: Any, n_objectives: int) -> list[float]:
    """A job's return as floats: anything float() accepts (numpy and torch scalars, 0-d tensors), or for
    several objectives a list/tuple of those, one per direction."""
    if n_objectives == 1:
        try:
            values = [float(value)]
        except (TypeError, ValueError):
            raise ValueError(f"the job returned {value!r}: return a number (anything float() accepts)") from None
    else:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"the job returned {value!r}: a study with {n_objectives} directions needs a list "
                             f"or tuple of {n_objectives} numbers")
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"the job returned {value!r}: every element must be a number") from None
        if len(values) != n_objectives:
            raise ValueError(f"the job returned {len(values)} value(s) for {n_objectives} directions")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the job returned {value!r}: not a finite number")
    return values


def outcome(ret: JobReturn, n_objectives: int) -> Outcome:
    if ret.status == JobStatus.FAILED:
        err = ret._return_value
        if isinstance(err, optuna.TrialPruned):
            return Outcome(State.PRUNED, reason=str(err))
        return Outcome(State.FAIL, reason=f"{type(err).__name__}: {err}", error=err)
    try:
        return Outcome(State.COMPLETE, to_values(ret.return_value, n_objectives))
    except ValueError as err:
        return Outcome(State.FAIL, reason=str(err))


def where(err: BaseException) -> str:
    """The innermost frame of the job's exception: 'file:line in function' (from a traceback, or from
    the text a joblib worker attaches as the exception's cause)."""
    if err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        return f"{frame.filename}:{frame.lineno} in {frame.name}"
    cause = str(err.__cause__ or "")
    found = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', cause)
    if found:
        filename, line, name = found[-1]
        return f"{filename}:{line} in {name}"
    return "unknown location (the job's log has its traceback)"


class TrialsFailed(CompactHydraException):
    """Too many trials of a batch failed. Printed by Hydra as its message alone, exit code 1."""


def failure_report(failed: Sequence[tuple[int, Sequence[str], Outcome, Optional[str]]], launched: int,
                   max_failure_rate: float) -> str:
    """``failed``: (trial number, overrides, outcome, job output dir) of each failed trial of the batch."""
    lines = [f"{len(failed)} of {launched} trials of the last batch failed, above hydra.sweeper.max_failure_rate="
             f"{max_failure_rate:g}; stopping the sweep. Failed trials:"]
    for number, overrides, out, out_dir in failed:
        lines.append(f"  trial {number}: {' '.join(overrides) or '(no overrides)'}  ->  {out.reason}"
                     + (f"  [{out_dir}]" if out_dir else ""))
    first = failed[0][2]
    if first.error is not None:
        err = first.error
        lines.append(f"First failure (trial {failed[0][0]}): {type(err).__name__}: {err}")
        lines.append(f"  at {where(err)}")
        if err.__traceback__ is not None:
            lines.append("".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip())
        elif err.__cause__ is not None:
            lines.append(str(err.__cause__).rstrip())
    lines.append("Raise hydra.sweeper.max_failure_rate (a fraction of each batch) to let the study go on.")
    return "\n".join(lines)
