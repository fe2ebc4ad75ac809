"""Several sweepers on one study: a sweeper beats for the trials it runs (a trial system attribute, on every Optuna
storage: the journal file has no heartbeat of Optuna's own, and Optuna's works with ``optimize`` only, not with the
ask/tell a Hydra sweeper uses); a RUNNING trial whose beats stopped for a grace period (its sweeper died) is FAIL,
and is asked again with the same parameters as Optuna's ``RetryFailedTrialCallback`` records retries
(``failed_trial``, ``retry_history``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import optuna

log = logging.getLogger(__name__)
State = optuna.trial.TrialState
BEAT = "hydralign:heartbeat"  # the system attribute: the last beat, in seconds since the epoch


class Heartbeat:
    """While the block runs, every ``interval`` seconds (and once at entry): a beat for each of ``trials``."""

    def __init__(self, study: optuna.Study, trials: list, interval: float):
        self.storage, self.ids, self.interval = study._storage, [t._trial_id for t in trials], interval
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def beat(self) -> None:
        now = time.time()
        for trial_id in self.ids:
            try:
                self.storage.set_trial_system_attr(trial_id, BEAT, now)
            except RuntimeError:  # finished meanwhile (Optuna refuses writes to a finished trial)
                pass

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self.thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def fail_stale(study: optuna.Study, grace_period: float, retries: int) -> int:
    """RUNNING trials with no beat for ``grace_period`` seconds become FAIL; each is asked again (a WAITING trial
    with its parameters) while its retries are fewer than ``retries``. Returns how many were failed."""
    now, failed = time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        last = t.system_attrs.get(BEAT) or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - float(last) <= grace_period:
            continue
        study._storage.set_trial_state_values(t._trial_id, state=State.FAIL)
        failed += 1
        history = list(t.system_attrs.get("retry_history", []))
        retry = len(history) < retries
        log.warning("trial %d: no heartbeat for %.0f s (its sweeper stopped): FAIL%s", t.number, now - float(last),
                    ", asked again with the same parameters" if retry else "")
        if retry:
            study.add_trial(optuna.trial.create_trial(
                state=State.WAITING, params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
                system_attrs={"failed_trial": t.system_attrs.get("failed_trial", t.number),
                              "retry_history": history + [t.number]}))
    return failed


def counted(study: optuna.Study) -> int:
    """The trials that count toward ``n_trials``: finished or running, a failed one only if not asked again."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state in (State.COMPLETE, State.PRUNED, State.RUNNING)
               or (t.state == State.FAIL and t.number not in retried))
