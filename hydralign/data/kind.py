"""What a method's data kind does with its data, as one object (``hydralign/data/kinds/<name>.py``, found by
listing that package): read a raw record into an item, turn the embedded task's records into its format, encode
items into token ids, give the conversations that validation generates from, and serve training micro-batches.

The base class is the SFT behaviour (chat conversations, one sequence per example); a kind overrides what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch.utils.data import Dataset

from hydralign.data import readers
from hydralign.data.batching import TrainMicroBatches, WindowSchedule
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import TokenizeStats, encode


class DataKind:
    name: ClassVar[str] = "sft"
    seeded: ClassVar[bool] = False  # does encoding draw from the data seed (KTO's twins)?

    def converter(self, dcfg: Any, skipped: dict[str, dict[str, int]]) -> Callable[[Any, str, str], Any]:
        """(record, origin, split) -> an item, or None for a record skipped (counted in ``skipped[split]``)."""
        fields = readers.Fields(dcfg.messages_field, dcfg.prompt_field, dcfg.completion_field)
        return lambda rec, origin, split: readers.to_messages(rec, origin, fields)

    def synthetic(self, records: list[dict], seed: int) -> list[dict]:
        """The embedded task's chat records in the raw format this kind reads."""
        return records

    def encode(self, tokenizer: Any, template: ChatTemplate, items: list, cfg: Any, skipped: dict[str, int]
               ) -> tuple[list, TokenizeStats]:
        d = cfg.data
        return encode(tokenizer, template, items, d.max_seq_len, d.overlong, not cfg.method.completion_only)

    def assemble(self, sequences: tuple, fields: dict[str, Any]) -> Any:
        """An encoded item from its sequences and per-item fields, as the tokenized cache stores them."""
        return sequences[0]

    def conversations(self, items: list) -> list[list[dict]]:
        """Each item as prompt + reference answer: what validation generates from and scores against."""
        return items

    def train_items(self, examples: list, prompts: Callable[[], list]) -> list:
        """What training draws from: the encoded examples (online RL: the generation prompts, built by ``prompts``)."""
        return examples

    def describe(self, stats: TokenizeStats) -> str:
        """What this kind adds to a split's summary line."""
        return ""

    def train_batches(self, data: Any, plan: Any, rank: int) -> Dataset:
        """This rank's training micro-batches: windows of the plan's effective batch (hydralign.data.batching)."""
        schedule = WindowSchedule(data.units(), plan.effective_batch, plan.micro_batch, plan.world_size, rank,
                                  plan.seed)
        flash = "flash" in str(data.cfg.model.get("attn_implementation") or "")  # its varlen kernel takes one row
        return TrainMicroBatches(data.train_examples, schedule, data.tokenizer.pad_token_id, plan.total_steps,
                                 data.cfg.data.packing, data.train_rows, one_row=flash)
