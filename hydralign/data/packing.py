"""Tokens, not padding (``data.packing``): several examples in one row, each seeing only itself.

- ``padding_free``: a micro-batch's examples (the same ones the padded path takes) are concatenated into
  one row. Nothing else changes: the window schedule, the unit counts, the gradients.
- ``packed``: before training, examples are grouped into rows of at most ``data.max_tokens_per_micro``
  tokens by best-fit decreasing (``pack_rows``: a pure function of the lengths, ties broken by the seed);
  the rows are then the schedule's items, reshuffled every epoch by (seed, epoch) like examples are. A row's
  units are the sum of its examples' units, so a step's loss is still its sum over units divided once.

A collated row carries ``position_ids`` that restart at 0 for every example and ``segments`` (which
sequence of the micro-batch each token belongs to; -1 for the padding after a shorter row) and no
``attention_mask``: Hugging Face models (transformers >= 4.56) then keep attention inside each example,
by flash-attention's variable-length kernel where it runs and by a block-diagonal causal mask on SDPA and
eager attention (``hydralign.models.inputs``). Each example's first label is ignored, so the last token of
one example never learns to predict the next example's first token.

Sequences of a micro-batch are numbered as the padded path orders its rows: examples in order; for
preference pairs chosen 0..B-1 then rejected B..2B-1, with a pair's chosen and rejected side by side in
one row.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from hydralign.data.mapped import item_lengths
from hydralign.data.preference import PairExample
from hydralign.data.tokenize import IGNORE, Example


@dataclass(frozen=True)
class PackedRow:
    """Examples (indices into the train split) that share one row, and what the row adds to its window."""

    members: tuple[int, ...]
    units: int


def item_length(item: Union[Example, PairExample]) -> int:
    """Tokens an example (a pair: chosen + rejected) takes in a row."""
    return sum(len(seq.input_ids) for seq in item.sequences())


def pack_rows(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Best-fit decreasing: items longest first, each into the open row with the least room that still
    fits it (a new row when none does). Equal lengths are taken in an order drawn from ``seed``, so which
    short examples share a row is a pure function of (lengths, capacity, seed). Rows come out in the
    order they were opened; members in the order they were placed."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens, more than a row's "
                         f"{capacity} (data.max_tokens_per_micro)")
    tiebreak = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tiebreak[i]))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row) of the open rows, sorted
    for i in order:
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at == len(room):
            rows.append([i])
            free, row = capacity - lengths[i], len(rows) - 1
        else:
            free, row = room.pop(at)
            rows[row].append(i)
            free -= lengths[i]
        if free > 0:
            bisect.insort(room, (free, row))
    return rows


def packed_items(examples: Sequence, units: list[int], capacity: int, seed: int) -> list[PackedRow]:
    """The train split as packed rows (``data.packing=packed``); a memory-mapped split gives its lengths column."""
    lengths = item_lengths(examples)
    return [PackedRow(tuple(r), sum(units[i] for i in r))
            for r in pack_rows(lengths, capacity, seed)]


def collate_rows(rows: list[list[Union[Example, PairExample]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of examples (or pairs) -> ``input_ids``, ``labels``, ``position_ids``, ``segments`` [R, W]
    (W: the longest row), with the sequence numbering of the module docstring."""
    num_items = sum(len(r) for r in rows)
    width = max(sum(item_length(e) for e in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    item = 0
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            parts = [(seq, j * num_items + item) for j, seq in enumerate(e.sequences())]  # chosen, then rejected
            for seq, number in parts:
                n = len(seq.input_ids)
                ids[r, at:at + n] = torch.tensor(seq.input_ids)
                labels[r, at:at + n] = torch.tensor(seq.labels)
                labels[r, at] = IGNORE  # never a target: the previous example's last token must not predict it
                positions[r, at:at + n] = torch.arange(n)
                segments[r, at:at + n] = number
                at += n
            item += 1
        positions[r, at:] = torch.arange(width - at)  # the padding: a sequence of its own, no loss
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segments": segments}
