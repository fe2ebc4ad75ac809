"""The methods, one spec per method in ``hydralign/methods/specs/<name>.py`` (pure: no torch). Adding a method is
adding that file, its module (``methods/<name>.py``), its loss (``losses/<name>.py``) and ``conf/method/<name>.yaml``:
the specs are found by listing this package, so no list elsewhere names a method.

A spec holds what the rest of hydralign asks of a method, as flags, so nothing outside ``methods/`` compares a
method name: its config schema (registered in Hydra's ConfigStore group ``method`` as ``<name>_schema``, the first
default of its yaml), the kind of data it trains on (``hydralign.data.kinds``), the unit its loss is normalized by over
a whole optimizer step (DESIGN.md section 5), its LightningModule, its frozen models and the ones it holds in memory,
its plan-time checks, and whether it supports packing and the chunked loss, starts from a trained model, and how
to avoid holding a frozen model whole under DeepSpeed ZeRO-3.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec


def _discover() -> dict[str, MethodSpec]:
    specs = [importlib.import_module(f"{__name__}.{m.name}").SPEC for m in pkgutil.iter_modules(__path__)]
    return {s.name: s for s in sorted(specs, key=lambda s: s.order)}


METHODS: dict[str, MethodSpec] = _discover()


def get_method(name: Optional[str]) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method={name} is not available; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def with_flag(flag: str) -> list[str]:
    """The methods whose spec sets ``flag`` (for messages: "applies to method=sft, dpo")."""
    return [n for n, s in METHODS.items() if getattr(s, flag)]
