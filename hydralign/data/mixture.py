"""``data.source=mixture``: the train data read source by source and sampled by each source's ``take`` (a fraction
or a count, as open-instruct's ``dataset_mixer_list``; checked in ``hydralign.plan.mixture``), deterministically from
the data seed: which records a source gives is a function of (data seed, source name) alone, so every job of a sweep
trains on the same examples and another seed draws others. The sources' records are then shuffled together.

Each source may map its own field names (``data.mixture.N.messages_field``, ...; null: ``data.*_field``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hydralign.data import readers
from hydralign.errors import ConfigError, DataError
from hydralign.plan.mixture import check_take, is_file, source_name, taken

FIELDS = ("messages_field", "prompt_field", "completion_field", "chosen_field", "rejected_field", "label_field")


def source_fields(dcfg: Any, entry: Any) -> SimpleNamespace:
    """The field names a source's records are read with: its own where given, else ``data.*``."""
    return SimpleNamespace(**{f: entry.get(f) or dcfg[f] for f in FIELDS})


def read_source(entry: Any) -> list[tuple[Any, str]]:
    source = str(entry["source"])
    if is_file(source):
        return readers.read_files([source])
    return readers.read_hub(source, entry.get("hub_config"), entry.get("split") or "train", entry.get("revision"))


def sample_indices(size: int, count: int, seed: int, name: str) -> list[int]:
    """``count`` record indices of a source of ``size``: a sample without replacement drawn from (seed, name); a
    count above the size takes every record ``count // size`` times, then a sample of the rest."""
    rng = random.Random(f"hydralign-mixture/{seed}/{name}")
    whole, rest = divmod(count, size)
    return [i for _ in range(whole) for i in range(size)] + rng.sample(range(size), rest)


def mixture_items(dcfg: Any, seed: int, converter: Callable[[Any], Callable], convert: Callable
                  ) -> tuple[list, dict[str, int]]:
    """(the mixed train items, {source name: records taken}). ``converter(fields)`` makes a kind's record reader for
    a source's field names; ``convert(records, where, reader)`` reads records into items (None for a skipped one)."""
    items: list = []
    counts: dict[str, int] = {}
    for i, entry in enumerate(dcfg.mixture):
        where, name = f"data.mixture.{i}", source_name(entry)
        records = read_source(entry)
        if not records:
            raise DataError(f"{where} ({entry['source']}) has no records")
        take = check_take(entry.get("take", 1.0), where)
        stated = entry.get("num_examples")
        if stated is not None and int(stated) != len(records):
            raise ConfigError(f"{where}.num_examples={stated} but {entry['source']} has {len(records)} records: set "
                              f"{where}.num_examples={len(records)} (or null)")
        count = taken(take, len(records), bool(entry.get("repeat", False)), where, name)
        if count == 0:
            raise ConfigError(f"{where} ({name}): take={take:g} of {len(records)} records is none: raise it")
        if count > len(records):
            print(f"hydralign: {where} ({name}): {count} records from {len(records)}, repeated "
                  f"(x{count / len(records):.3g}, {where}.repeat=true)", flush=True)
        chosen = [records[j] for j in sample_indices(len(records), count, seed, name)]
        items.extend(convert(chosen, f"{where} ({entry['source']})", converter(source_fields(dcfg, entry))))
        counts[name] = count
    random.Random(f"hydralign-mixture/{seed}").shuffle(items)
    return items, counts
