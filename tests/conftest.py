"""Fixtures. Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import os

# One thread per process unless the caller says otherwise: results then never hinge on the thread count, and a
# 2-rank test on a 2-core machine runs 2 threads, not 4 (set before anything imports torch; subprocesses inherit it)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.helpers import tiny_cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(overrides: list[str] | None = None):
        return tiny_cfg(tmp_path, overrides)

    return _make
