"""Every module imports (catches syntax errors and missing names in code no other test reaches)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import hydralign

MODULES = sorted(m.name for m in pkgutil.walk_packages(hydralign.__path__, "hydralign.")
                 if m.name != "hydralign.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_import(name):
    importlib.import_module(name)
