"""Preemption and time limits: a signal asks the job to stop; it stops at an optimizer-step boundary, after a
checkpoint, and continues from it when it runs again.

    SIGUSR1, SIGUSR2   the warning before a time limit: submitit asks SLURM for ``--signal=USR2@<signal_delay_s>``
                       (``conf/hydra/launcher/submitit_slurm.yaml``), a batch script of one's own for
                       ``--signal=USR1@90``. Checkpoint, then requeue the job (``requeue``) and exit.
    SIGTERM            a preemption (SLURM requeues the job itself where the partition's PreemptMode is REQUEUE),
                       ``scancel``, ``kill``: checkpoint and exit; ``resume=auto`` continues it.

A handler only notes the signal (no I/O, no collective inside a handler: a rank that got the signal must not
start a collective the others are not in). The ranks agree at the next optimizer-step boundary, in one
collective (``hydralign.run.preemption.StopOnSignal``), write one checkpoint together and raise ``Preempted``; the
job closes its MLflow run (KILLED, continued later) and the process exits with ``PREEMPTED_EXIT``. A requeued
SLURM job (``SLURM_RESTART_COUNT`` > 0) continues its run folder's newest checkpoint without ``resume`` being
set (``hydralign.run.references``), into the same MLflow run, tagged ``slurm.requeues``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Optional

WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGTERM, *WARNING_SIGNALS)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped with a checkpoint written, to be run again (requeue, resume=auto)


class Preempted(Exception):
    """The job stopped on a signal after writing a checkpoint (``checkpoint``: None when it stopped before its
    first step, with nothing new to save). ``warned``: a time-limit warning (the job asks to be requeued)."""

    def __init__(self, signals: str, step: int, checkpoint: Optional[str], warned: bool):
        self.signals, self.step, self.checkpoint, self.warned = signals, step, checkpoint, warned
        saved = f"wrote {checkpoint}" if checkpoint else "nothing new to save"
        super().__init__(f"stopped by {signals} at step {step} ({saved}); it continues from there when run again "
                         "(a requeued SLURM job does by itself; otherwise resume=auto with the same run_dir)")

    def __reduce__(self):
        return Preempted, (self.signals, self.step, self.checkpoint, self.warned)


class Signals:
    """The stop signals this process received. ``listen`` installs the handlers (main thread only; again after
    someone else replaced them), remembering the handlers they replace; ``restore`` puts those back. ``also``:
    called with each signal too (the self-launcher forwards it to its ranks). What was replaced stays known after
``restore`` (``after_preemption`` calls submitit's handler once the run is closed)."""

    def __init__(self, also: Optional[Callable[[int], None]] = None):
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}
        self.also = also

    def listen(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            before = signal.signal(sig, self._note)
            if sig not in self.previous and before != self._note:
                self.previous[sig] = before

    def _note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self.also is not None:
            self.also(signum)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, before in self.previous.items():
            signal.signal(sig, before if before is not None else signal.SIG_DFL)

    def forget(self) -> None:
        """A new job in this process: no signal received yet."""
        self.received.clear()

    @property
    def warned(self) -> bool:
        return any(s in WARNING_SIGNALS for s in self.received)

    @property
    def terminated(self) -> bool:
        return signal.SIGTERM in self.received

    def names(self) -> str:
        return "+".join(dict.fromkeys(signal.Signals(s).name for s in self.received)) or "a signal to another rank"

    def submitit_handler(self) -> Optional[Callable]:
        """submitit's own handler of its warning signal, where this process is a submitit job."""
        for sig in WARNING_SIGNALS:
            handler = self.previous.get(sig)
            if getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
                return handler
        return None


LISTENER = Signals()  # the job's (signal handlers are per process)


def slurm_job_id(environ: Optional[dict] = None) -> Optional[str]:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an element of a job array."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_count(environ: Optional[dict] = None) -> Optional[int]:
    """How often SLURM has requeued this job (``SLURM_RESTART_COUNT``); None outside SLURM."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    return int(env.get("SLURM_RESTART_COUNT") or 0)


def after_preemption(stopped: Preempted, rank_zero: bool, signals: Signals = LISTENER) -> None:
    """Once the run is closed: rank 0 of a job warned of its time limit asks to be requeued. Under submitit its
    own handler does it (it saves the job again, counts the timeout against ``max_num_timeout``, calls
    ``scontrol requeue`` and exits the process); a SLURM job of one's own calls ``scontrol requeue``. A SIGTERM
    is not requeued here: a preempting SLURM requeues the job itself, and a ``scancel`` must stay cancelled."""
    if not (rank_zero and stopped.warned):
        return
    handler = signals.submitit_handler()
    if handler is not None:
        sig = next(s for s in WARNING_SIGNALS if signals.previous.get(s) is handler)
        handler(sig, None)  # exits the process when it requeues; raises when submitit will not
        return
    job = slurm_job_id()
    if job is None:
        return
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    print(f"hydralign: scontrol requeue {job}: " + ("done" if done.returncode == 0 else done.stderr.strip()),
          file=sys.stderr, flush=True)
