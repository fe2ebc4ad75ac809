"""What a method is, as the rest of hydralign sees it: a ``MethodSpec`` of flags (pure). The specs themselves are
``hydralign/methods/specs/<name>.py``, found by listing that package."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

DATA_KINDS = ("sft", "preference", "prompts", "unpaired")
UNITS = ("tokens", "pairs", "sequences", "completions")
# What a method's runs are compared by, unless its spec says otherwise: the embedded task's greedy scores and val loss.
REPORT_METRICS = ("val/exact_match", "val/exact_match_flex", "val/loss")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    schema: type  # config dataclass, extends config.schema.MethodConfig
    data_kind: str  # sft: conversations | preference: prompt + chosen + rejected | prompts (online RL) | unpaired
    unit: str  # what one optimizer step's loss sum is divided by: tokens | pairs | sequences | completions
    module: str  # "package.module:Class" of the LightningModule, imported when training starts
    order: int  # where it is listed (choices in messages)
    sequences_per_example: int = 1  # forward rows per example (2 for a chosen/rejected pair)
    examples_per_record: int = 1  # train examples one embedded-task record becomes (unpaired: chosen and rejected)
    frozen: Optional[Callable[[Any], tuple[str, ...]]] = None  # cfg -> frozen models, described
    # cfg -> names of the frozen models held in memory while training (a copy, not a cache or a view):
    # what a strategy must shard besides the policy (hydralign.plan.strategy.check_strategy).
    held: Optional[Callable[[Any], tuple[str, ...]]] = None
    check: Optional[Callable[[Any], None]] = None  # cfg -> None, raises ConfigError (pure)
    packing: bool = False  # whether data.packing (padding_free / packed micro-batches) applies
    chunked_loss: bool = False  # whether model.loss_chunk_size (the head and loss over chunks) applies
    starts_from_trained: bool = False  # normally starts from an SFT run (a note when it starts from random init)
    # The overrides that stop ZeRO-3 from holding this method's frozen models whole on every GPU.
    zero3_fix: Optional[str] = None
    # The metrics ``python -m hydralign.report`` shows for this method's runs, first = what "best" means there
    # (names as the method module logs them: ``val/<name>`` from validation, bare names from training steps).
    report_metrics: tuple[str, ...] = REPORT_METRICS

    def frozen_models(self, cfg: Any) -> tuple[str, ...]:
        return self.frozen(cfg) if self.frozen else ()

    def held_models(self, cfg: Any) -> tuple[str, ...]:
        return self.held(cfg) if self.held else ()

    def module_class(self):
        path, _, cls = self.module.partition(":")
        return getattr(importlib.import_module(path), cls)
