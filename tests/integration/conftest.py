"""Fixtures shared by integration tests: one short SFT run of the default task (the start of DPO)."""

from __future__ import annotations

import json

import pytest

from hydralign.run.job import run
from tests.helpers import shared, tiny_cfg

# The default task, shrunk to 2-digit sums so a CI-sized run learns it (val exact match 0.99 here; the task's
# encoding makes that a matter of steps, not of the machine: benchmarks/RESULTS.md, issue 15).
LEARN = ["data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128",
         "eval.num_generate=128", "trainer.max_steps=800", "eval.every_n_steps=400",
         "checkpoint.every_n_steps=200", "checkpoint.keep_last_k=1", "trainer.log_every_n_steps=10"]


@pytest.fixture(scope="session")
def sft_trained():
    """(cfg, metrics, tmp): the run directory is tmp / "run" (hf_model/ exported). Trained once per session, by the
    first test process that asks (pytest-xdist's other worker waits for it and reads its metrics.json)."""
    with shared("sft") as tmp:
        cfg = tiny_cfg(tmp, LEARN)
        done = tmp / "run" / "metrics.json"  # written once the run has ended and exported
        metrics = json.loads(done.read_text()) if done.is_file() else run(cfg)
    return cfg, metrics, tmp
