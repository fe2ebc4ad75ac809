"""Models: the policy (``policy.py``: tokenizer, a tiny Llama from config or a pretrained model,
``init_from`` weights) and PEFT adapters (``peft.py``, with its torch-free checks in
``peft_checks.py``). Frozen models (DPO's reference, a distillation teacher) belong here too.

The names below are re-exported lazily, so that ``import hydralign.models.peft_checks`` (called from
the pure, torch-free plan) does not import torch through this package."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {name: "hydralign.models.policy" for name in
            ("CHAR_SPECIALS", "DTYPES", "build_model", "build_tokenizer", "char_tokenizer", "load_weights",
             "tokenizer_and_template")}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
