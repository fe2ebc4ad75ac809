"""Read -> convert -> split -> encode: a run's data as its data kind makes it (``encode_data``, in this process's
memory); hydralign/data/cache.py shares the result between jobs and ranks (``prepare_data``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from hydralign.data import readers
from hydralign.data.arithmetic import make_splits
from hydralign.data.kinds import get_kind
from hydralign.data.mixture import mixture_items
from hydralign.data.readers import data_seed
from hydralign.data.tokenize import TokenizeStats
from hydralign.errors import ConfigError, DataError

SPLITS = ("train", "val")


def _arithmetic(cfg: Any, data_kind: Any, to_item: Any) -> dict[str, list]:
    a = cfg.data.arithmetic
    seed = cfg.seed if a.get("seed") is None else a.seed  # data.arithmetic.seed pins the split
    splits = make_splits(seed, a.num_train, a.num_val, a.max_digits, a.system_prompt, a.pad_operands,
                         a.reverse_operands, a.balanced_fraction)
    out = {}
    for split in SPLITS:
        recs = data_kind.synthetic(splits[split], seed)
        items = [to_item(r, f"arithmetic {split} #{i}", split) for i, r in enumerate(recs)]
        out[split] = [x for x in items if x is not None]
    return out


def load_records(cfg: Any, kind: str = "sft", mix: Optional[dict[str, int]] = None
                 ) -> tuple[dict[str, list], dict[str, dict[str, int]]]:
    """({"train": [...], "val": [...]}, skipped counts per split) for the configured source, as items of the
    data kind (hydralign.data.kinds). A mixture's records per source go into ``mix``."""
    dcfg = cfg.data
    skipped: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    data_kind = get_kind(kind)
    to_item = data_kind.converter(dcfg, skipped)
    if dcfg.source == "arithmetic":
        return _arithmetic(cfg, data_kind, to_item), skipped

    def convert(records: list[tuple[Any, str]], where: str, split: str, reader: Any = to_item) -> list:
        if not records:
            raise DataError(f"the {where} data set is empty")
        items = [reader(rec, origin, split) for rec, origin in records]
        return [x for x in items if x is not None]

    if dcfg.source == "files":
        if not dcfg.train_files:
            raise ConfigError("data.source=files needs data.train_files=[/path/train.jsonl, ...]")
        train = convert(readers.read_files(list(dcfg.train_files)), f"train ({', '.join(dcfg.train_files)})",
                        "train")
    elif dcfg.source == "hub":
        if not dcfg.hub_id:
            raise ConfigError("data.source=hub needs data.hub_id")
        train = convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.train_split, dcfg.get("hub_revision")),
                        dcfg.hub_id, "train")
    elif dcfg.source == "mixture":
        train, counts = mixture_items(dcfg, data_seed(cfg), lambda fields: data_kind.converter(fields, skipped),
                                      lambda recs, where, reader: convert(recs, where, "train", reader))
        if mix is not None:
            mix.update(counts)
    else:
        raise ConfigError(f"data.source={dcfg.source} must be arithmetic, files, hub or mixture")
    if dcfg.val_files:
        val = convert(readers.read_files(list(dcfg.val_files)), "val", "val")
    elif dcfg.source == "hub" and dcfg.val_split:
        val = convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.val_split, dcfg.get("hub_revision")),
                      dcfg.hub_id, "val")
    else:
        val = []
    if not val:
        train, val = _hold_out(train, float(dcfg.val_fraction), data_seed(cfg))
    return {"train": train, "val": val}, skipped


def _hold_out(train: list, fraction: float, seed: int) -> tuple[list, list]:
    if not 0 < fraction < 1:
        raise ConfigError("no validation data: give data.val_files (or data.val_split for hub sets) or "
                          "data.val_fraction=0.02 to hold out part of train")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(train) * fraction)))
    return [train[i] for i in sorted(order[n_val:])], [train[i] for i in order[:n_val]]


def load_conversations(cfg: Any) -> dict[str, list[list[dict]]]:
    """{"train": [...], "val": [...]} chat conversations (SFT records) for the configured source."""
    return load_records(cfg, "sft")[0]


@dataclass
class Prepared:
    """A run's data, encoded: per split the items training and validation read (lists, or memory-mapped views of
    the tokenized cache), their counts, and the conversations validation generates from."""

    examples: dict[str, Sequence]
    stats: dict[str, TokenizeStats]
    conversations: dict[str, Sequence]
    mix: dict[str, int] = field(default_factory=dict)  # a mixture's records per source
    cache: Optional[dict[str, Any]] = None  # hit, key, path, bytes (None: the cache was not used)
    seconds: float = 0.0  # the data stage: read, convert, encode (a hit: check and map)

    def describe(self) -> str:
        """The console's line: where the tokens came from and how long it took."""
        if self.cache is None:
            where = "tokenized in this process (no cache)"
        else:
            c = self.cache
            what = "hit" if c["hit"] else ("miss, rebuilt a damaged copy" if c["rebuilt_damaged"] else "miss, built")
            where = f"cache {what}: {c['path']} (key {c['key']}, {c['bytes'] / 2**20:.1f} MiB)"
        mix = "".join(f"; {name} {n}" for name, n in self.mix.items())
        return f"data stage: {where} in {self.seconds:.2f} s" + (f"; mixture: {mix[2:]}" if mix else "")

    def metrics(self) -> dict[str, float]:
        out = {k: v for s, st in self.stats.items() for k, v in st.as_metrics(s).items()}
        out["data/prepare_seconds"] = self.seconds
        if self.cache is not None:
            out["data/cache_hit"] = float(self.cache["hit"])
        out.update({f"data/mix/{name}/examples": float(n) for name, n in self.mix.items()})
        return out


def encode_data(cfg: Any, tokenizer: Any, template: Any, kind: Any) -> Prepared:
    """Read, convert, split and encode in this process (the cache's miss path, and ``data.cache=false``)."""
    mix: dict[str, int] = {}
    records, skipped = load_records(cfg, kind.name, mix)
    examples, stats = {}, {}
    for split in SPLITS:
        examples[split], stats[split] = kind.encode(tokenizer, template, records[split], cfg, skipped[split])
    return Prepared(examples, stats, {s: kind.conversations(records[s]) for s in SPLITS}, mix)
