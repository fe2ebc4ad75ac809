"""The data module: read -> split -> tokenize once, then serve micro-batches per the plan.

The method's data kind decides what a record becomes: chat messages (``sft``), a preference pair
(``preference``), or a prompt with its answer key (``prompts``: online RL samples its own completions;
validation still scores the reference answers' loss); all are read, split and counted the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hydralign.data import readers
from hydralign.data.arithmetic import make_splits, preference_records
from hydralign.data.batching import EvalBatches, ResumableSequentialSampler, TrainMicroBatches, WindowSchedule
from hydralign.data.packing import PackedRow, packed_items
from hydralign.data.preference import PairFields, encode_pairs, to_pair
from hydralign.data.rollouts import RolloutMicroBatches, RolloutSchedule
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import GenerationExample, TokenizeStats, encode, generation_examples
from hydralign.errors import ConfigError, DataError
from hydralign.models.inputs import check_packing_support
from hydralign.plan.core import Plan


def _converter(cfg: Any, kind: str, skipped: dict[str, dict[str, int]]) -> Callable[[Any, str, str], Any]:
    """(record, origin, split) -> a conversation (sft) or a Pair (preference); None for a skipped pair."""
    dcfg = cfg.data
    if kind == "preference":
        fields = PairFields(dcfg.prompt_field, dcfg.chosen_field, dcfg.rejected_field)

        def pair(rec: Any, origin: str, split: str):
            item, reason = to_pair(rec, origin, fields)
            if reason:
                skipped[split][reason] = skipped[split].get(reason, 0) + 1
            return item

        return pair
    fields_sft = readers.Fields(dcfg.messages_field, dcfg.prompt_field, dcfg.completion_field)
    return lambda rec, origin, split: readers.to_messages(rec, origin, fields_sft)


def load_records(cfg: Any, kind: str = "sft") -> tuple[dict[str, list], dict[str, dict[str, int]]]:
    """({"train": [...], "val": [...]}, skipped counts per split) for the configured source."""
    dcfg = cfg.data
    skipped: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    to_item = _converter(cfg, kind, skipped)
    if dcfg.source == "arithmetic":
        a = dcfg.arithmetic
        seed = cfg.seed if a.get("seed") is None else a.seed  # data.arithmetic.seed pins the split
        splits = make_splits(seed, a.num_train, a.num_val, a.max_digits, a.system_prompt, a.pad_operands,
                             a.reverse_operands, a.balanced_fraction)
        out = {}
        for split in ("train", "val"):
            recs = preference_records(splits[split], seed) if kind == "preference" else splits[split]
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
    def __init__(self, cfg: Any, tokenizer: Any, template: ChatTemplate, kind: str = "sft", unit: str = "tokens"):
        super().__init__()
        self.cfg, self.tokenizer, self.template, self.kind, self.unit = cfg, tokenizer, template, kind, unit
        self.stats: dict[str, TokenizeStats] = {}
        self.plan: Plan | None = None
        self.train_rows: list[PackedRow] | None = None  # data.packing=packed: the train split in rows

    def load(self) -> None:
        dcfg = self.cfg.data
        records, skipped = load_records(self.cfg, self.kind)
        for split in ("train", "val"):
            if self.kind == "preference":
                stats = TokenizeStats(total=len(records[split]) + sum(skipped[split].values()),
                                      dropped_empty=skipped[split].get("empty", 0),
                                      dropped_identical=skipped[split].get("identical", 0))
                examples = encode_pairs(self.tokenizer, self.template, records[split], dcfg.max_seq_len,
                                        dcfg.overlong, stats)
            else:
                examples, stats = encode(self.tokenizer, self.template, records[split], dcfg.max_seq_len,
                                         dcfg.overlong, not self.cfg.method.completion_only)
            setattr(self, f"{split}_examples", examples)
            self.stats[split] = stats
        if not self.train_examples:
            raise DataError(f"no train example survived tokenization ({self.stats['train']}); raise "
                            "data.max_seq_len or use data.overlong=truncate")
        if dcfg.packing != "none":
            check_packing_support()
        if dcfg.packing == "packed":
            self.train_rows = packed_items(self.train_examples, self._example_units(), int(dcfg.max_tokens_per_micro),
                                           int(self.cfg.seed))
        ecfg = self.cfg.eval
        convs = {s: self._conversations(records[s]) for s in ("train", "val")}
        if self.kind == "prompts":  # online RL: train on the prompts, their assistant turn the answer key
            self.train_examples = generation_examples(self.tokenizer, self.template, convs["train"])
        shots = convs["train"][: ecfg.num_fewshot] if ecfg.prompt_format == "few_shot" else []
        self.generation_examples: list[GenerationExample] = generation_examples(
            self.tokenizer, self.template, convs["val"][: ecfg.num_generate], shots)

    def _conversations(self, items: list) -> list[list[dict]]:
        """Generation prompts and references: a pair's prompt, answered by its chosen answer."""
        if self.kind != "preference":
            return items
        return [p.prompt + [{"role": "assistant", "content": p.chosen}] for p in items]

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
        parts = []
        for split, s in self.stats.items():
            pairs = (f", dropped empty {s.dropped_empty}, dropped identical {s.dropped_identical}"
                     if self.kind == "preference" else "")
            parts.append(f"{split} {s.kept}/{s.total} kept (truncated {s.truncated}, dropped over-long "
                         f"{s.dropped_overlong}, dropped with no target {s.dropped_no_target}{pairs})")
        return "data: " + "; ".join(parts) + f"; {len(self.generation_examples)} generation prompts"

    def train_dataloader(self) -> DataLoader:
        plan, trainer = self.plan, self.trainer
        if self.kind == "prompts":
            rollouts = RolloutSchedule(len(self.train_examples), plan.rollout, trainer.global_rank, plan.seed)
            data = RolloutMicroBatches(self.train_examples, rollouts, plan.total_steps)
            sampler = ResumableSequentialSampler(len(data), lambda: trainer.global_step * plan.grad_accum)
            return DataLoader(data, batch_size=None, sampler=sampler, num_workers=self.cfg.data.num_workers,
                              persistent_workers=self.cfg.data.num_workers > 0)
        schedule = WindowSchedule(self.units(), plan.effective_batch,
                                  plan.micro_batch, plan.world_size, trainer.global_rank, plan.seed)
        flash = "flash" in str(self.cfg.model.get("attn_implementation") or "")  # its varlen kernel takes one row
        data = TrainMicroBatches(self.train_examples, schedule, self.tokenizer.pad_token_id, plan.total_steps,
                                 self.cfg.data.packing, self.train_rows, one_row=flash)
        # Resume: continue after the last completed optimizer step (read when iteration starts).
        sampler = ResumableSequentialSampler(len(data), lambda: trainer.global_step * plan.grad_accum)
        return DataLoader(data, batch_size=None, sampler=sampler, num_workers=self.cfg.data.num_workers,
                          persistent_workers=self.cfg.data.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        data = EvalBatches(self.val_examples, self.cfg.eval.batch_size, self.tokenizer.pad_token_id,
                           self.plan.world_size, self.trainer.global_rank)
        return DataLoader(data, batch_size=None, shuffle=False)
