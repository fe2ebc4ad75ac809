"""Fixtures. Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import os

# One thread per process unless the caller says otherwise: results then never hinge on the thread count, and a
# 2-rank test on a 2-core machine runs 2 threads, not 4 (set before anything imports torch; subprocesses inherit it)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.helpers import SHARED_ROOT, tiny_cfg  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _shared_root(tmp_path_factory):
    """tests.helpers.shared's root: the session's temporary folder, which pytest-xdist's workers (each given
    ``<session>/popen-gwN``) have in common."""
    base = tmp_path_factory.getbasetemp()
    SHARED_ROOT[:] = [(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"]


@pytest.fixture
def make_cfg(tmp_path):
    def _make(overrides: list[str] | None = None):
        return tiny_cfg(tmp_path, overrides)

    return _make


_FIRST = {"multiprocess": 0, "integration": 1}  # the rest (unit, golden) after


def pytest_collection_modifyitems(config, items):
    """Long files first: with ``-n 2`` (pytest-xdist, whole files per process) the multi-process and integration
    files start early and the many quick unit tests fill the gaps at the end, instead of one long file running alone
    on one core while the other has nothing left (the order within each folder is kept)."""
    items.sort(key=lambda item: _FIRST.get(item.path.parent.name, 2))
