"""``unpaired``: a prompt with one completion labelled desirable or not (KTO), read from TRL's unpaired format or
unpaired from preference pairs (``hydralign.data.unpaired``). Each example brings a mismatched twin for the KL
estimate; training's first micro-batch of every optimizer step also carries the twins of this rank's whole share
of the step, so the estimate is taken over the whole step (all devices, all accumulation) before any loss of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from hydralign.data.arithmetic import preference_records
from hydralign.data.batching import TrainMicroBatches, collate
from hydralign.data.kind import DataKind
from hydralign.data.preference import PairFields
from hydralign.data.readers import data_seed
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import TokenizeStats
from hydralign.data.unpaired import UnpairedExample, UnpairedFields, encode_unpaired, to_unpaired


class StepTwins(TrainMicroBatches):
    """Training micro-batches of the completions alone (their twins are not trained on); the first of each optimizer
    step adds ``kl_window`` (the collated twins of every example this rank trains on in that step) and
    ``kl_window_index`` (their positions in the split)."""

    def _collate(self, members: list[int]) -> dict:
        batch = collate([self.examples[i].seq for i in members], self.pad_id)
        batch["index"] = torch.tensor(members, dtype=torch.long)
        batch["real"] = torch.ones(len(members), dtype=torch.bool)
        batch["desirable"] = torch.tensor([self.examples[i].desirable for i in members])
        return batch

    def __getitem__(self, index: int) -> dict:
        batch = super().__getitem__(index)
        step, k = divmod(index, self.schedule.grad_accum)
        if k == 0:
            share = [i for j in range(self.schedule.grad_accum)
                     for i in self.schedule.micro_batch(step * self.schedule.grad_accum + j)[0]]
            batch["kl_window"] = collate([self.examples[i].kl for i in share], self.pad_id)
            batch["kl_window_index"] = torch.tensor(share, dtype=torch.long)
        return batch


class UnpairedKind(DataKind):
    name = "unpaired"
    seeded = True

    def converter(self, dcfg: Any, skipped: dict[str, dict[str, int]]) -> Callable[[Any, str, str], Any]:
        fields = UnpairedFields(dcfg.prompt_field, dcfg.completion_field, dcfg.label_field,
                                PairFields(dcfg.prompt_field, dcfg.chosen_field, dcfg.rejected_field))

        def items(rec: Any, origin: str, split: str):
            found, reason = to_unpaired(rec, origin, fields)
            if reason:
                skipped[split][reason] = skipped[split].get(reason, 0) + 1
            return found or None  # one record's items stay together (a pair's two halves in one split)

        return items

    def synthetic(self, records: list[dict], seed: int) -> list[dict]:
        return preference_records(records, seed)  # the embedded task's pairs, unpaired by the converter

    def encode(self, tokenizer: Any, template: ChatTemplate, items: list, cfg: Any, skipped: dict[str, int]
               ) -> tuple[list, TokenizeStats]:
        flat = [item for group in items for item in group]
        # total: the examples read plus the records skipped (a skipped pair counts once, as in the preference kind)
        stats = TokenizeStats(total=len(flat) + sum(skipped.values()), dropped_empty=skipped.get("empty", 0),
                              dropped_identical=skipped.get("identical", 0))
        d = cfg.data
        return encode_unpaired(tokenizer, template, flat, d.max_seq_len, d.overlong, stats, data_seed(cfg)), stats

    def assemble(self, sequences: tuple, fields: dict[str, Any]) -> UnpairedExample:
        return UnpairedExample(sequences[0], sequences[1], bool(fields["desirable"]))

    def conversations(self, items: list) -> list[list[dict]]:
        """A record's prompt, answered by its desirable completion (records without one are not generated from)."""
        out = []
        for group in items:
            good = next((it for it in group if it.desirable), None)
            if good is not None:
                out.append(good.prompt + [{"role": "assistant", "content": good.completion}])
        return out

    def describe(self, stats: TokenizeStats) -> str:
        return f", dropped empty {stats.dropped_empty}, dropped identical {stats.dropped_identical}"

    def train_batches(self, data: Any, plan: Any, rank: int) -> Dataset:
        batches = super().train_batches(data, plan, rank)
        return StepTwins(batches.examples, batches.schedule, batches.pad_id, plan.total_steps)


KIND = UnpairedKind()
