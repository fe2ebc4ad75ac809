"""The data kinds, one module each (``<name>.py`` defining ``KIND``), found by listing this package."""

from __future__ import annotations

import importlib
import pkgutil

from hydralign.data.kind import DataKind


def _discover() -> dict[str, DataKind]:
    kinds = [importlib.import_module(f"{__name__}.{m.name}").KIND for m in pkgutil.iter_modules(__path__)]
    return {k.name: k for k in kinds}


KINDS: dict[str, DataKind] = _discover()


def get_kind(name: str) -> DataKind:
    if name not in KINDS:
        raise ValueError(f"data kind {name!r} is unknown; known: {', '.join(sorted(KINDS))}")
    return KINDS[name]
