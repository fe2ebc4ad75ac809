"""Fixtures. Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(overrides: list[str] | None = None):
        return tiny_cfg(tmp_path, overrides)

    return _make
