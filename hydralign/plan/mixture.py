"""The mixture part of the plan (pure, no I/O): ``data.mixture`` checked source by source, each source's share
counted where its size is known (a count, or a fraction of a stated ``num_examples``), as open-instruct's
``dataset_mixer_list`` reads a take: a value in (0, 1] is a fraction of the source, a whole number above 1 a count.
A count above a known size is refused with both numbers unless the source says ``repeat: true``; the data module
refuses the same once it has read a source whose size the config does not state (hydralign/data/mixture.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.errors import ConfigError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class MixtureSource:
    name: str  # data/mix/<name>/examples
    source: str  # a local file or a hub id
    take: float  # as written: a fraction in (0, 1] or a whole count > 1
    repeat: bool
    size: Optional[int]  # the source's records, when the config states them (num_examples)
    count: Optional[int]  # the records this source gives the mixture, when known

    @property
    def is_fraction(self) -> bool:
        return self.take <= 1


def is_file(source: str) -> bool:
    return PurePath(source).suffix.lower() in FILE_SUFFIXES


def source_name(entry: Any) -> str:
    """``name``, else a file's stem or the hub id's last part."""
    name = entry.get("name") if hasattr(entry, "get") else None
    source = str(entry["source"])
    return str(name) if name else (PurePath(source).stem if is_file(source) else source.rstrip("/").split("/")[-1])


def check_take(take: Any, where: str) -> float:
    try:
        value = float(take)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.take={take!r} must be a fraction in (0, 1] or a whole count > 1") from None
    if value <= 0 or (value > 1 and value != int(value)):
        raise ConfigError(f"{where}.take={take} must be a fraction in (0, 1] or a whole count > 1 (open-instruct's "
                          "rule: 1.0 is the whole source, 2 is two records)")
    return value


def taken(take: float, size: Optional[int], repeat: bool, where: str, name: str) -> Optional[int]:
    """Records a source gives the mixture: ``int(take x size)`` for a fraction (open-instruct's rounding down), the
    count itself for a count, which may exceed ``size`` only with ``repeat``."""
    if take <= 1:
        return None if size is None else int(take * size)
    count = int(take)
    if size is not None and count > size and not repeat:
        raise ConfigError(f"{where} ({name}): take={count} asks for more records than the source has ({size}): "
                          f"lower {where}.take to <= {size} or give a fraction, or set {where}.repeat=true to "
                          "repeat the source")
    return count


def check_mixture(cfg: Any) -> tuple[MixtureSource, ...]:
    """Every source of ``data.mixture`` checked; () when the data is not a mixture."""
    source, entries = setting(cfg, "data.source"), list(setting(cfg, "data.mixture") or [])
    if source != "mixture":
        if entries:
            raise ConfigError(f"data.mixture is set but data.source={source}: set data.source=mixture to train on "
                              "the mixture (or data.mixture=[] to drop it)")
        return ()
    if not entries:
        raise ConfigError("data.source=mixture needs data.mixture=[{source: <file or hub id>, take: <fraction or "
                          "count>}, ...]")
    out, seen = [], {}
    for i, entry in enumerate(entries):
        where = f"data.mixture.{i}"
        if not entry.get("source"):
            raise ConfigError(f"{where} needs a source: a local .jsonl/.json/.parquet file or a hub data set id")
        name = source_name(entry)
        if name in seen:
            raise ConfigError(f"{where} and data.mixture.{seen[name]} are both named {name!r} (the name of "
                              f"data/mix/<name>/examples): set {where}.name")
        seen[name] = i
        take = check_take(entry.get("take", 1.0), where)
        size = entry.get("num_examples")
        size = None if size is None else int(size)
        repeat = bool(entry.get("repeat", False))
        out.append(MixtureSource(name, str(entry["source"]), take, repeat, size,
                                 taken(take, size, repeat, where, name)))
    return tuple(out)


def mixture_count(sources: tuple[MixtureSource, ...]) -> Optional[int]:
    """The mixture's records before the held-out split, when every source's share is known."""
    counts = [s.count for s in sources]
    return None if any(c is None for c in counts) else sum(counts)


def format_mixture(sources: tuple[MixtureSource, ...]) -> list[tuple[str, Any]]:
    """The plan's rows: the mixture's total, then one row per source."""
    if not sources:
        return []
    total = mixture_count(sources)
    rows: list[tuple[str, Any]] = [("mixture", f"{len(sources)} sources, "
                                    + (f"{total} records" if total is not None else "records counted once read"))]
    for s in sources:
        take = f"fraction {s.take:g}" if s.is_fraction else f"count {int(s.take)}"
        if s.count is None:
            what = f"{take} of a source counted once read"
        else:
            what = f"{s.count} ({take}" + (f" of {s.size}" if s.size is not None else "")
            what += f", repeated x{s.count / s.size:.3g})" if s.repeat and s.size and s.count > s.size else ")"
        if s.repeat and s.size is None:
            what += " (repeat: true, a count above the source's size repeats it)"
        rows.append((f"  {s.name}", what))
    return rows
