"""One clean console for a job: the plan, the data summary, a progress bar and the validation lines,
each once. Called by the job (``hydralign.cli``) once its config has been checked, before the
libraries it quiets are used.

- Lightning adds its own console handler to the ``lightning`` logger while Hydra's job logging
  already prints every propagated record: each INFO line appeared twice. Lightning's handler goes,
  so its lines appear once, in Hydra's format, and in the job's log file.
- Lightning's advertising tip and torch 2.13's deprecation of ``LeafSpec`` (raised inside
  Lightning, not our code) are dropped; MLflow's database set-up notes and transformers' shard bar
  when exporting are quieted. Warnings about the run itself stay.
"""

from __future__ import annotations

import logging
import warnings

_TIP = "💡 Tip:"


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


def configure_console() -> None:
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    import lightning  # noqa: F401  (adds its handler at import: remove it after)

    root_prints = any(isinstance(h, logging.StreamHandler) for h in logging.getLogger().handlers)
    light = logging.getLogger("lightning")
    if root_prints:  # Hydra's job logging: let Lightning's records reach it, and only it
        for handler in list(light.handlers):
            if type(handler) is logging.StreamHandler:
                light.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTip())
    quiet_mlflow()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" on export


def quiet_mlflow() -> None:
    """MLflow's notes on creating a new SQLite store ("Creating initial MLflow database tables..."). Set without
    importing MLflow (1-2 s, which a run with logger=none never needs): its import-time logging setup configures
    the ``mlflow`` logger only and keeps these levels (checked)."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
