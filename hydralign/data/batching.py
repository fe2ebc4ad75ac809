"""Micro-batches that know their optimizer step's unit count.

The loss contract (DESIGN.md section 5): a step's loss is the sum over the units (loss tokens for SFT,
pairs for DPO: the method's ``unit``) of the whole accumulated, all-device batch (the *window*),
divided once by their count. Which examples form each window is a pure function of (seed, epoch), so
every rank computes the window's unit count from the examples alone: no communication, and no
dependence on how the window is split into devices x accumulation x micro-batches.

Layout of one window of ``effective`` shuffled examples: ``[grad_accum, world_size, micro]``;
rank r's k-th micro-batch of the step is ``window[k, r, :]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch.utils.data import Dataset, Sampler

from hydralign.data.packing import PackedRow, collate_rows
from hydralign.data.tokenize import IGNORE, Example


class EpochPermutation:
    """``perm(epoch)``: a permutation of range(n) that is a pure function of (seed, epoch); the latest is kept."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __call__(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return self._perm[1]


class WindowSchedule:
    def __init__(self, units: list[int], effective: int, micro: int, world_size: int, rank: int, seed: int):
        """``units[i]``: what example i adds to its window's normalizer (its loss tokens, or 1 pair)."""
        assert effective % (micro * world_size) == 0, "the plan guarantees divisibility"
        self.tokens = torch.tensor(units, dtype=torch.long)
        self.n, self.effective, self.micro = len(units), effective, micro
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.grad_accum = effective // (micro * world_size)
        self.windows_per_epoch = self.n // effective
        if self.windows_per_epoch < 1:
            raise ValueError(f"{self.n} examples cannot fill one step of {effective}")
        self._permutation = EpochPermutation(self.n, seed)

    def window(self, step: int) -> torch.Tensor:
        epoch, w = divmod(step, self.windows_per_epoch)
        return self._permutation(epoch)[w * self.effective:(w + 1) * self.effective]

    def micro_batch(self, index: int) -> tuple[list[int], int, bool, float]:
        """index counts this rank's micro-batches from the start of training. Returns the example
        indices, the window's unit count (all ranks), whether this micro-batch closes the window,
        and the epoch position as a float."""
        step, k = divmod(index, self.grad_accum)
        window = self.window(step)
        start = (k * self.world_size + self.rank) * self.micro
        members = window[start:start + self.micro].tolist()
        window_units = int(self.tokens[window].sum())
        return members, window_units, k == self.grad_accum - 1, step / self.windows_per_epoch


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the micro-batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_items(items: list, indices: list[int], pad_id: int, real: Optional[list[bool]] = None) -> dict:
    """Each item's ``sequences()`` as rows, sequence by sequence: SFT examples -> one row each; preference pairs
    -> rows ``[chosen_1..chosen_B, rejected_1..rejected_B]`` (one forward for both). ``index``: the items' positions in their split; ``real``: False for the
    fillers that keep ranks in step (they must add nothing)."""
    per_item = [item.sequences() for item in items]
    batch = collate([seqs[j] for j in range(len(per_item[0])) for seqs in per_item], pad_id)
    batch["index"] = torch.tensor(indices, dtype=torch.long)
    batch["real"] = torch.tensor(real if real is not None else [True] * len(items), dtype=torch.bool)
    for key in getattr(items[0], "FIELDS", ()):  # per-item values a kind adds (unpaired: desirable)
        batch[key] = torch.tensor([getattr(item, key) for item in items])
    return batch


class TrainMicroBatches(Dataset):
    """Item i = this rank's i-th micro-batch of training, collated, with its window's unit count.

    ``packing`` (``hydralign.data.packing``): ``padding_free`` puts the micro-batch's examples in one row;
    ``packed`` schedules ``rows`` (the train split packed) instead of examples, one row each, and with
    ``one_row`` (flash-attention: its varlen kernel takes one row) the micro-batch's rows as one."""

    def __init__(self, examples: list, schedule: WindowSchedule, pad_id: int, total_steps: int,
                 packing: str = "none", rows: Optional[list[PackedRow]] = None, one_row: bool = False):
        self.examples, self.schedule, self.pad_id = examples, schedule, pad_id
        self.length = total_steps * schedule.grad_accum
        self.packing, self.rows, self.one_row = packing, rows, one_row

    def __len__(self) -> int:
        return self.length

    def _collate(self, members: list[int]) -> dict:
        if self.packing == "none":
            return collate_items([self.examples[i] for i in members], members, self.pad_id)
        if self.packing == "padding_free":
            groups = [members]
        else:
            groups = [list(self.rows[r].members) for r in members]
            if self.one_row:
                groups = [[i for g in groups for i in g]]
        batch = collate_rows([[self.examples[i] for i in g] for g in groups], self.pad_id)
        indices = [i for g in groups for i in g]
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        batch["real"] = torch.ones(len(indices), dtype=torch.bool)
        return batch

    def __getitem__(self, index: int) -> dict:
        members, window_units, last, epoch = self.schedule.micro_batch(index)
        batch = self._collate(members)
        # Plain Python values: they stay on the host, so reading them never syncs a device.
        batch.update(window_units=window_units, window_last=last, epoch=epoch, split="train")
        return batch


class ResumableSequentialSampler(Sampler[int]):
    """start, start+1, ..., length-1; ``start`` is read when iteration begins, so a resumed run
    continues with the micro-batch after the last completed optimizer step. ``len`` stays the full
    length: Lightning restores its own batch counter and counts the skipped part as done."""

    def __init__(self, length: int, start_fn: Optional[Callable[[], int]] = None):
        self.length, self.start_fn = length, start_fn or (lambda: 0)

    def __iter__(self):
        return iter(range(min(self.start_fn(), self.length), self.length))

    def __len__(self) -> int:
        return self.length


class EvalBatches(Dataset):
    """Fixed, unshuffled batches of this rank's share of an evaluation split (loss only). Every rank
    gets the same number of batches (sharded models need every rank in every forward); a rank short
    of one gets a filler (``real`` False, SFT labels all ignored), so it adds nothing to the sums."""

    def __init__(self, examples: list, batch_size: int, pad_id: int, world_size: int, rank: int,
                 split: str = "val"):
        mine = list(range(len(examples)))[rank::world_size]
        self.examples, self.split = examples, split
        self.batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        per_rank = -(-len(examples) // world_size)
        self.filler_batch = bool(examples) and len(self.batches) < -(-per_rank // batch_size)
        if self.filler_batch:
            self.batches.append([0])
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        members = self.batches[index]
        if self.filler_batch and index == len(self.batches) - 1:
            batch = collate_items([self.examples[0].without_target()], members, self.pad_id, real=[False])
        else:
            batch = collate_items([self.examples[i] for i in members], members, self.pad_id)
        batch["split"] = self.split
        return batch
