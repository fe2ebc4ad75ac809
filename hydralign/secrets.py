"""Passwords out of everything hydralign writes (a leaf, pure). A storage or tracking URL may carry one
(``postgresql://user:password@host/db``); files, MLflow params and tags get ``postgresql://user:***@host/db``.

Where a process started by hydralign needs the real URL, it gets it through the environment, never a file:
``HYDRALIGN_OPTUNA_STORAGE`` (the sweeper's study storage, for its jobs) and ``HYDRALIGN_TRACKING_URI`` (the tracking
URI, for the ranks ``hydralign.distributed.launch`` starts). Hydra's own ``.hydra/`` files record what was typed:
give a URL with a password as ``${oc.env:VAR}`` (README, "Stores for multi-node sweeps") so they hold the
interpolation only.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
STORAGE_ENV = "HYDRALIGN_OPTUNA_STORAGE"
TRACKING_ENV = "HYDRALIGN_TRACKING_URI"
# scheme://user:password@  (the password: anything up to the last @ before the host, no whitespace or slash)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s/]*)(?P<at>@)")


def redact(text: str) -> str:
    """Every URL password in ``text`` replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("at"), text)


def has_password(url: str) -> bool:
    return redact(url) != url


def redact_tree(node: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, strings) with every string redacted."""
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, dict):
        return {k: redact_tree(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_tree(v) for v in node]
    return node
