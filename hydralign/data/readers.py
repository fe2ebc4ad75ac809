"""Read raw records (local JSONL / JSON / Parquet, hub data sets) and normalize them to chat messages.

Every record keeps its origin (``file:line``) so a bad one is reported where it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydralign.errors import DataError
from hydralign.rewards import SOURCE_FIELD, AnswerKey

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Fields:
    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"


def read_jsonl(path: Path) -> list[tuple[Any, str]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append((json.loads(line), f"{path}:{lineno}"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    return out


def read_json(path: Path) -> list[tuple[Any, str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (or JSON Lines in a .jsonl file), "
                        f"found {type(data).__name__}")
    return [(rec, f"{path}: record {i}") for i, rec in enumerate(data)]


def read_parquet(path: Path) -> list[tuple[Any, str]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [(rec, f"{path}: row {i}") for i, rec in enumerate(rows)]


READERS = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet}


def read_files(paths: list[str]) -> list[tuple[Any, str]]:
    records: list[tuple[Any, str]] = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"data file {path} does not exist (cwd: {Path.cwd()}); give an absolute path")
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported extension {path.suffix!r}; use one of {', '.join(READERS)}")
        records.extend(reader(path))
    return records


def read_hub(hub_id: str, config: Optional[str], split: str, revision: Optional[str] = None) -> list[tuple[Any, str]]:
    """A hub data set (or a local data-set directory/script path) through ``datasets.load_dataset``."""
    import datasets

    ds = datasets.load_dataset(hub_id, config, split=split, revision=revision)
    return [(rec, f"{hub_id}[{split}] row {i}") for i, rec in enumerate(ds)]


def data_seed(cfg: Any) -> int:
    """The data's seed: ``data.seed``, or the run's seed when it is null (held-out split, mixture, KTO's twins)."""
    seed = cfg.data.get("seed") if hasattr(cfg.data, "get") else getattr(cfg.data, "seed", None)
    return int(cfg.seed if seed is None else seed)


def _check_messages(messages: Any, origin: str, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: field '{field}' must be a non-empty list of {{role, content}} messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            found = sorted(msg) if isinstance(msg, dict) else type(msg).__name__
            raise DataError(f"{origin}: {field}[{i}] needs 'role' and 'content'; found {found}")
        if msg["role"] not in ROLES:
            raise DataError(f"{origin}: {field}[{i}] has role {msg['role']!r}; expected one of {ROLES}")
        if not isinstance(msg["content"], str):
            raise DataError(f"{origin}: {field}[{i}].content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{origin}: '{field}' has no assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _as_turns(value: Any, role: str, origin: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return list(value)  # conversational prompt/completion; checked with the whole conversation
    raise DataError(f"{origin}: field '{field}' must be a string or a list of messages, "
                    f"found {type(value).__name__}")


def _with_source(messages: list[dict], record: dict) -> list[dict]:
    source = record.get(SOURCE_FIELD)
    if isinstance(source, str) and source:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages[last] = {**messages[last], "content": AnswerKey(messages[last]["content"], source)}
    return messages


def to_messages(record: Any, origin: str, fields: Fields) -> list[dict]:
    """One raw record -> chat messages. ``prompt``/``completion`` becomes a user and an assistant turn. A
    string ``dataset`` field (open-instruct's RLVR data) makes the last assistant turn an ``AnswerKey`` that
    carries it, so online RL can route the sample to that source's verifiers (``method.rewards_by_source``)."""
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected a JSON object, found {type(record).__name__}")
    if fields.messages in record:
        return _with_source(_check_messages(record[fields.messages], origin, fields.messages), record)
    has_p, has_c = fields.prompt in record, fields.completion in record
    if has_p and has_c:
        turns = (_as_turns(record[fields.prompt], "user", origin, fields.prompt)
                 + _as_turns(record[fields.completion], "assistant", origin, fields.completion))
        return _with_source(_check_messages(turns, origin, f"{fields.prompt}+{fields.completion}"), record)
    missing = fields.completion if has_p else fields.prompt if has_c else None
    if missing:
        raise DataError(f"{origin}: missing field '{missing}'; fields found: {sorted(record)}")
    raise DataError(f"{origin}: record has neither '{fields.messages}' nor '{fields.prompt}'/"
                    f"'{fields.completion}'; fields found: {sorted(record)}. Point data.messages_field or "
                    "data.prompt_field/data.completion_field at the right names")
