"""Reading the composed config without restating a default: ``setting(cfg, "batch.max_micro")`` is the config's
value, or, where the node lacks the key (a partial config in a test, a plain dict), the schema's default. Pure.

A key the config holds as null stays None (an Optional field the user cleared); a key the schema does not know is
a programming error and raises KeyError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from hydralign.config.schema import Config, MethodConfig

_ABSENT = object()


def lookup(cfg: Any, dotted: str) -> Any:
    """The value at ``dotted`` in a DictConfig, dict or object, or ``_ABSENT``."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return _ABSENT
        if isinstance(node, Mapping) or hasattr(node, "keys"):
            if part not in node:
                return _ABSENT
            node = node[part]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            return _ABSENT
    return node


def schema_default(dotted: str, method_schema: Optional[type] = None) -> Any:
    """The default the schema gives ``dotted`` (``method.*``: the method's own schema, when given)."""
    node: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if node is MethodConfig and method_schema is not None:
            node = method_schema
        if not dataclasses.is_dataclass(node):  # a free-form dict (trainer.*, refs.*): no default
            return None
        field = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if field is None:
            raise KeyError(f"{dotted} is not a key of the config schema ({node.__name__} has no {part})")
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = None
        if i == len(parts) - 1:
            return None if value is dataclasses.MISSING or value == "???" else value
        node = type(value) if dataclasses.is_dataclass(value) else value
    return None


def setting(cfg: Any, dotted: str, method_schema: Optional[type] = None) -> Any:
    value = lookup(cfg, dotted)
    if value is not _ABSENT:
        return value
    default = schema_default(dotted, method_schema)
    if isinstance(default, str) and default.startswith("${") and default.endswith("}"):  # optimizer.lr: ${lr}
        return setting(cfg, default[2:-1], method_schema)
    return default
