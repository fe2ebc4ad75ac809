"""The data module: read -> split -> tokenize once, then serve micro-batches per the plan.

The method's data kind (``hydralign.data.kinds``: ``sft``, ``preference``, ``prompts``, ``unpaired``) decides what
a record becomes, how it is encoded and how training draws it; all are read, split and counted the same way here.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hydralign.data import readers
from hydralign.data.arithmetic import make_splits
from hydralign.data.batching import EvalBatches, ResumableSequentialSampler
from hydralign.data.kinds import get_kind
from hydralign.data.packing import PackedRow, packed_items
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import GenerationExample, TokenizeStats, generation_examples
from hydralign.errors import ConfigError, DataError
from hydralign.models.inputs import check_packing_support
from hydralign.plan.core import Plan


def load_records(cfg: Any, kind: str = "sft") -> tuple[dict[str, list], dict[str, dict[str, int]]]:
    """({"train": [...], "val": [...]}, skipped counts per split) for the configured source, as items of the
    data kind (hydralign.data.kinds)."""
    dcfg = cfg.data
    skipped: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    data_kind = get_kind(kind)
    to_item = data_kind.converter(dcfg, skipped)
    if dcfg.source == "arithmetic":
        a = dcfg.arithmetic
        seed = cfg.seed if a.get("seed") is None else a.seed  # data.arithmetic.seed pins the split
        splits = make_splits(seed, a.num_train, a.num_val, a.max_digits, a.system_prompt, a.pad_operands,
                             a.reverse_operands, a.balanced_fraction)
        out = {}
        for split in ("train", "val"):
            recs = data_kind.synthetic(splits[split], seed)
            items = [to_item(r, f"arithmetic {split} #{i}", split) for i, r in enumerate(recs)]
            out[split] = [x for x in items if x is not None]
        return out, skipped

    def convert(records: list[tuple[Any, str]], where: str, split: str) -> list:
        if not records:
            raise DataError(f"the {where} data set is empty")
        items = [to_item(rec, origin, split) for rec, origin in records]
        return [x for x in items if x is not None]

    if dcfg.source == "files":
        if not dcfg.train_files:
            raise ConfigError("data.source=files needs data.train_files=[/path/train.jsonl, ...]")
        train = convert(readers.read_files(list(dcfg.train_files)), f"train ({', '.join(dcfg.train_files)})",
                        "train")
        val = convert(readers.read_files(list(dcfg.val_files)), "val", "val") if dcfg.val_files else []
    elif dcfg.source == "hub":
        if not dcfg.hub_id:
            raise ConfigError("data.source=hub needs data.hub_id")
        train = convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.train_split), dcfg.hub_id, "train")
        val = (convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.val_split), dcfg.hub_id, "val")
               if dcfg.val_split else [])
    else:
        raise ConfigError(f"data.source={dcfg.source} must be arithmetic, files or hub")
    if not val:
        if not 0 < dcfg.val_fraction < 1:
            raise ConfigError("no validation data: give data.val_files (or data.val_split for hub sets) or "
                              "data.val_fraction=0.02 to hold out part of train")
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, int(round(len(train) * dcfg.val_fraction)))
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in sorted(order[n_val:])]
    return {"train": train, "val": val}, skipped


def load_conversations(cfg: Any) -> dict[str, list[list[dict]]]:
    """{"train": [...], "val": [...]} chat conversations (SFT records) for the configured source."""
    return load_records(cfg, "sft")[0]


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
        records, skipped = load_records(self.cfg, self.kind.name)
        for split in ("train", "val"):
            examples, self.stats[split] = self.kind.encode(self.tokenizer, self.template, records[split], self.cfg,
                                                           skipped[split])
            setattr(self, f"{split}_examples", examples)
        if not self.train_examples:
            raise DataError(f"no train example survived tokenization ({self.stats['train']}); raise "
                            "data.max_seq_len or use data.overlong=truncate")
        if dcfg.packing != "none":
            check_packing_support()
        if dcfg.packing == "packed":
            self.train_rows = packed_items(self.train_examples, self._example_units(), int(dcfg.max_tokens_per_micro),
                                           int(self.cfg.seed))
        ecfg = self.cfg.eval
        convs = {s: self.kind.conversations(records[s]) for s in ("train", "val")}
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
            return [e.num_loss_tokens for e in self.train_examples]
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
        return "data: " + "; ".join(parts) + f"; {len(self.generation_examples)} generation prompts"

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
