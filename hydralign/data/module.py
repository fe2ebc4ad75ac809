"""The data module: read -> split -> tokenize once (hydralign.data.loading; shared through the tokenized cache,
hydralign.data.cache), then serve micro-batches per the plan.

The method's data kind (``hydralign.data.kinds``: ``sft``, ``preference``, ``prompts``, ``unpaired``) decides what
a record becomes, how it is encoded and how training draws it; all are read, split and counted the same way here.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hydralign.data.batching import EvalBatches, ResumableSequentialSampler
from hydralign.data.cache import prepare_data
from hydralign.data.kinds import get_kind
from hydralign.data.loading import Prepared, load_conversations, load_records  # noqa: F401 (tests import them here)
from hydralign.data.mapped import loss_units
from hydralign.data.packing import PackedRow, packed_items
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import GenerationExample, TokenizeStats, generation_examples
from hydralign.errors import DataError
from hydralign.models.inputs import check_packing_support
from hydralign.plan.core import Plan


class PostTrainingData(L.LightningDataModule):
    """The data of one run: read, converted and encoded by its kind (``load``), then served per the plan (the
    plan is given after loading, once the train split's count has refined it: ``serve``)."""

    def __init__(self, cfg: Any, tokenizer: Any, template: ChatTemplate, kind: str = "sft", unit: str = "tokens"):
        super().__init__()
        self.cfg, self.tokenizer, self.template, self.unit = cfg, tokenizer, template, unit
        self.kind = get_kind(kind)
        self.stats: dict[str, TokenizeStats] = {}
        self.plan: Plan | None = None
        self.train_rows: list[PackedRow] | None = None  # data.packing=packed: the train split in rows

    def load(self) -> None:
        dcfg = self.cfg.data
        self.prepared: Prepared = prepare_data(self.cfg, self.tokenizer, self.template, self.kind)
        self.stats = self.prepared.stats
        self.train_examples, self.val_examples = self.prepared.examples["train"], self.prepared.examples["val"]
        if not self.train_examples:
            raise DataError(f"no train example survived tokenization ({self.stats['train']}); raise "
                            "data.max_seq_len or use data.overlong=truncate")
        if dcfg.packing != "none":
            check_packing_support()
        if dcfg.packing == "packed":
            self.train_rows = packed_items(self.train_examples, self._example_units(),
                                           int(dcfg.max_tokens_per_micro), int(self.cfg.seed))
        ecfg = self.cfg.eval
        convs = self.prepared.conversations
        self.train_examples = self.kind.train_items(
            self.train_examples, lambda: generation_examples(self.tokenizer, self.template, convs["train"]))
        shots = convs["train"][: ecfg.num_fewshot] if ecfg.prompt_format == "few_shot" else []
        self.generation_examples: list[GenerationExample] = generation_examples(
            self.tokenizer, self.template, convs["val"][: ecfg.num_generate], shots)

    def serve(self, plan: Plan) -> PostTrainingData:
        """Micro-batches per ``plan`` from now on (the plan refined with this data's count)."""
        self.plan = plan
        return self

    def _example_units(self) -> list[int]:
        if self.unit == "tokens":
            return loss_units(self.train_examples)
        return [1] * len(self.train_examples)

    def units(self) -> list[int]:
        """Each train item's share of its window's normalizer (DESIGN.md section 5): an example's, or the
        sum of a packed row's examples'."""
        if self.train_rows is not None:
            return [r.units for r in self.train_rows]
        return self._example_units()

    @property
    def num_train_items(self) -> int:
        """What the schedule draws windows from: examples, or packed rows."""
        return len(self.train_rows) if self.train_rows is not None else len(self.train_examples)

    def summary(self) -> str:
        parts = [f"{split} {s.kept}/{s.total} kept (truncated {s.truncated}, dropped over-long {s.dropped_overlong}, "
                 f"dropped with no target {s.dropped_no_target}{self.kind.describe(s)})" for split, s in self.stats.items()]
        line = "data: " + "; ".join(parts) + f"; {len(self.generation_examples)} generation prompts"
        return line + "\n" + self.prepared.describe()

    def train_dataloader(self) -> DataLoader:
        plan, trainer = self.plan, self.trainer
        data = self.kind.train_batches(self, plan, trainer.global_rank)
        # Resume: continue after the last completed optimizer step (read when iteration starts).
        sampler = ResumableSequentialSampler(len(data), lambda: trainer.global_step * plan.grad_accum)
        return DataLoader(data, batch_size=None, sampler=sampler, num_workers=self.cfg.data.num_workers,
                          persistent_workers=self.cfg.data.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        data = EvalBatches(self.val_examples, self.cfg.eval.batch_size, self.tokenizer.pad_token_id,
                           self.plan.world_size, self.trainer.global_rank)
        return DataLoader(data, batch_size=None, shuffle=False)
