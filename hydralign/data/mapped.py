"""Encoded examples and their conversations as Arrow files, and read-only views that memory-map them.

Why Arrow IPC files through pyarrow (the format ``datasets`` keeps its own cache in, written in its stream layout so
``datasets.Dataset.from_file`` opens them too): a memory-mapped file is read by every process from the page cache,
so the ranks of a job hold one copy of the tokens however many ranks there are; an item is rebuilt only when a
batch asks for it (``MappedExamples``); the files are plain, so the cache checks each one's size and sha256.
Tokens and labels are stored as int32 and come back as the Python ints they were: batches are bitwise the same.

Layout of ``<split>.arrow``, one row per encoded item: ``ids<j>`` / ``labels<j>`` for each of its sequences (an SFT
example 1, a pair or an unpaired completion with its twin 2), ``length`` (its tokens, all sequences),
``units`` (its loss tokens) and any per-item field its kind adds (``desirable``). ``<split>_conversations.arrow``:
one JSON string per conversation validation generates from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hydralign.data.tokenize import Example
from hydralign.rewards import AnswerKey

ROWS_PER_BATCH = 8192  # rows per Arrow record batch: list offsets stay small, and a batch is built at a time
_SOURCE = "answer_source"  # a message whose content is an AnswerKey keeps its source under this key


def _example_schema(sequences: int, fields: tuple[str, ...]) -> pa.Schema:
    cols = [pa.field(f"{c}{j}", pa.list_(pa.int32())) for j in range(sequences) for c in ("ids", "labels")]
    cols += [pa.field("length", pa.int32()), pa.field("units", pa.int32())]
    return pa.schema(cols + [pa.field(f, pa.bool_()) for f in fields])


def _batch(items: list, schema: pa.Schema, sequences: int, fields: tuple[str, ...]) -> pa.RecordBatch:
    seqs = [item.sequences() for item in items]
    cols = []
    for j in range(sequences):
        cols.append(pa.array([s[j].input_ids for s in seqs], type=pa.list_(pa.int32())))
        cols.append(pa.array([s[j].labels for s in seqs], type=pa.list_(pa.int32())))
    cols.append(pa.array([sum(len(x.input_ids) for x in s) for s in seqs], type=pa.int32()))
    cols.append(pa.array([item.num_loss_tokens for item in items], type=pa.int32()))
    cols += [pa.array([bool(getattr(item, f)) for item in items], type=pa.bool_()) for f in fields]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def write_examples(path: Path, items: Sequence) -> None:
    """The encoded items of one split (every item of a split has the same kind) into ``path``."""
    first = items[0] if len(items) else Example([], [])
    sequences, fields = len(first.sequences()), tuple(getattr(type(first), "FIELDS", ()))
    schema = _example_schema(sequences, fields)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(items), ROWS_PER_BATCH):
            writer.write_batch(_batch(list(items[start:start + ROWS_PER_BATCH]), schema, sequences, fields))


def _encode_conversation(messages: list[dict]) -> str:
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), AnswerKey) and m["content"].source is not None:
            m[_SOURCE] = m["content"].source
        out.append(m)
    return json.dumps(out, ensure_ascii=False)


def _decode_conversation(text: str) -> list[dict]:
    messages = json.loads(text)
    for m in messages:
        if _SOURCE in m:
            m["content"] = AnswerKey(m["content"], m.pop(_SOURCE))
    return messages


def write_conversations(path: Path, conversations: Iterable[list[dict]]) -> None:
    schema = pa.schema([pa.field("json", pa.large_string())])
    convs = list(conversations)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(convs), ROWS_PER_BATCH):
            texts = [_encode_conversation(c) for c in convs[start:start + ROWS_PER_BATCH]]
            writer.write_batch(pa.RecordBatch.from_arrays([pa.array(texts, type=pa.large_string())], schema=schema))


def map_table(path: Path) -> pa.Table:
    """The Arrow table in ``path``, memory-mapped (zero copy: its buffers are the file's pages)."""
    return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()


class _Rows(Sequence):
    """Row access to a memory-mapped table: a global row index -> (record batch, row in it)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self._batches = table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[pa.RecordBatch, int]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {index} of {n}")
        b = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._batches[b], index - int(self._starts[b])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._row(i) for i in range(*index.indices(len(self)))]
        return self._row(int(index))

    def _row(self, index: int) -> Any:
        raise NotImplementedError


def _list_row(column: pa.ListArray, row: int) -> list[int]:
    offsets = column.offsets
    start, end = offsets[row].as_py(), offsets[row + 1].as_py()
    return column.values.slice(start, end - start).to_numpy(zero_copy_only=True).tolist()


class MappedExamples(_Rows):
    """A split's encoded items, rebuilt by the data kind (``DataKind.assemble``) when a batch asks for them."""

    def __init__(self, path: Path, kind: Any):
        super().__init__(map_table(path))
        names = self.table.schema.names
        self.kind = kind
        self.sequences = sum(1 for n in names if n.startswith("ids"))
        self.fields = tuple(n for n in names if n not in ("length", "units") and not n.startswith(("ids", "labels")))

    def _row(self, index: int) -> Any:
        batch, row = self._locate(index)
        seqs = tuple(Example(_list_row(batch.column(f"ids{j}"), row), _list_row(batch.column(f"labels{j}"), row))
                     for j in range(self.sequences))
        return self.kind.assemble(seqs, {f: batch.column(f)[row].as_py() for f in self.fields})

    def column(self, name: str) -> list[int]:
        """A per-item number (``length``, ``units``) for every item, without rebuilding any item."""
        return self.table.column(name).to_numpy().tolist()


class MappedConversations(_Rows):
    def __init__(self, path: Path):
        super().__init__(map_table(path))

    def _row(self, index: int) -> list[dict]:
        batch, row = self._locate(index)
        return _decode_conversation(batch.column(0)[row].as_py())


def loss_units(examples: Sequence) -> list[int]:
    """Each item's loss tokens (a mapped split reads its column; a list asks every item)."""
    return examples.column("units") if isinstance(examples, MappedExamples) else [e.num_loss_tokens for e in examples]


def item_lengths(examples: Sequence) -> list[int]:
    """Each item's tokens over all its sequences (what a packed row holds of it)."""
    if isinstance(examples, MappedExamples):
        return examples.column("length")
    return [sum(len(s.input_ids) for s in e.sequences()) for e in examples]
