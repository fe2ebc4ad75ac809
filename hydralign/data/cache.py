"""The tokenized-data cache: a run's data read, converted, split and tokenized once into
``<data.cache_dir or outputs/cache/tokenized>/<key>/`` and memory-mapped by every job and rank with the same key.

The key (``cache_key``) is made of what changes the tokens and nothing else: the data files' content (sha256), or
hub id + config + split + revision; the mixture (sources, takes, repeat, field names); the tokenizer as loaded
(its serialized vocabulary, added tokens, special tokens and chat template: this covers its files and the markers
a template adds); the chat template; max length and overlong policy; the data kind and the field mapping; whether
SFT trains on every token; the held-out split and its seed (where a split is drawn); hydralign's encoding code and
the tokenizer libraries' versions. Not lr, beta, batch sizes, steps or the run's seed where no draw uses it.

Concurrency and integrity, as the reference log-prob cache (hydralign/methods/reference_cache.py): rank 0 of a job
checks the folder; on a miss it takes an exclusive lock, checks again (another job may have built it meanwhile),
builds into ``<key>.tmp-<pid>/``, writes ``manifest.json`` last (every file's size and sha256, the counts, and the
manifest's own checksum), flushes and renames the folder into place. A folder whose manifest or any file
disagrees (truncated, a flipped byte, another key) is moved aside and rebuilt, never used. The job's other ranks
wait for rank 0's answer, then map the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from hydralign.checked_files import file_sha256, fsync_path, locked
from hydralign.data.loading import SPLITS, Prepared, encode_data
from hydralign.data.mapped import MappedConversations, MappedExamples, write_conversations, write_examples
from hydralign.data.mixture import FIELDS, source_fields
from hydralign.data.readers import data_seed
from hydralign.data.tokenize import TokenizeStats
from hydralign.plan.mixture import is_file

FORMAT = 1  # the folder's layout; raise it when what is stored changes
MANIFEST = "manifest.json"
_ENCODING_CODE = ("readers.py", "tokenize.py", "templates.py", "chat.py", "chat_auto.py", "segments.py",
                  "preference.py", "unpaired.py", "kind.py", "kinds", "mixture.py", "mapped.py", "loading.py")


def cache_root(cfg: Any) -> Path:
    configured = cfg.data.get("cache_dir")
    return Path(configured).expanduser().resolve() if configured else Path.cwd() / "outputs" / "cache" / "tokenized"


def _code_digest() -> str:
    here, h = Path(__file__).resolve().parent, hashlib.sha256()
    for name in _ENCODING_CODE:
        for path in sorted((here / name).rglob("*.py")) if (here / name).is_dir() else [here / name]:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of the tokenizer as loaded: its serialized model (vocabulary, merges, normalizer, added tokens) or
    vocabulary, its special tokens and chat template."""
    h = hashlib.sha256()
    parts = [type(tokenizer).__name__, str(tokenizer.chat_template or ""),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])]
    if getattr(tokenizer, "is_fast", False):
        parts.append(tokenizer.backend_tokenizer.to_str())
    else:
        parts.append(json.dumps(sorted(tokenizer.get_vocab().items())))
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _files(paths: Any) -> list[list[str]]:
    """``[[path, sha256], ...]`` in the list's order, repeats kept: the files are read and joined in that order
    (the held-out split and the record order follow it), so another order or a repeated file is other data."""
    return [[str(Path(p).expanduser().resolve()), file_sha256(Path(p).expanduser())] for p in paths]


def _mixture(dcfg: Any) -> list[dict[str, Any]]:
    out = []
    for entry in dcfg.mixture:
        e = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else dict(entry)
        described = {k: e.get(k) for k in ("take", "repeat", "name", "split", "hub_config", "revision")}
        described["fields"] = vars(source_fields(dcfg, e))
        source = str(e["source"])
        described["source"] = _files([source]) if is_file(source) else source
        out.append(described)
    return out


def cache_key(cfg: Any, tokenizer: Any, kind: Any) -> tuple[str, dict[str, Any]]:
    """(key, what it is made of). Reads the data files (their content hash), not the records."""
    d = cfg.data
    carved = not d.val_files and not (d.source == "hub" and d.val_split)
    source: dict[str, Any] = {"kind": d.source}
    if d.source == "files":
        source["files"] = _files(d.train_files)
    elif d.source == "hub":
        source.update(hub_id=d.hub_id, hub_config=d.hub_config, revision=d.get("hub_revision"), split=d.train_split,
                      val_split=d.val_split)
    else:
        source["mixture"] = _mixture(d)
    described = {
        "format": FORMAT, "code": _code_digest(),
        "libraries": {m: _version(m) for m in ("tokenizers", "transformers", "pyarrow")},
        "source": source, "val_files": _files(d.val_files),
        "val_fraction": float(d.val_fraction) if carved else None,
        "seed": data_seed(cfg) if (carved or d.source == "mixture" or kind.seeded) else None,
        "data_kind": kind.name, "fields": {f: d[f] for f in FIELDS},
        "tokenizer": tokenizer_identity(tokenizer), "chat_template": cfg.model.chat_template,
        "max_seq_len": int(d.max_seq_len), "overlong": d.overlong,
        "train_on_all": not bool(cfg.method.get("completion_only", True)),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24], described


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verified(folder: Path, key: str) -> Optional[dict[str, Any]]:
    """The manifest of a complete, intact cache folder of ``key``; None when anything disagrees."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("format") != FORMAT
            or manifest.get("checksum") != _manifest_checksum(manifest)):
        return None
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
            return None
    return manifest


def _write(folder: Path, prepared: Prepared, key: str, described: dict[str, Any]) -> None:
    folder.mkdir(parents=True)
    for split in SPLITS:
        write_examples(folder / f"{split}.arrow", prepared.examples[split])
        write_conversations(folder / f"{split}_conversations.arrow", prepared.conversations[split])
    files = {}
    for path in sorted(folder.iterdir()):
        fsync_path(path)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {"format": FORMAT, "key": key, "files": files, "mix": prepared.mix, "described": described,
                "stats": {s: vars(prepared.stats[s]) for s in SPLITS}}
    manifest["checksum"] = _manifest_checksum(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    fsync_path(folder / MANIFEST)
    fsync_path(folder)


def ensure_cache(cfg: Any, tokenizer: Any, template: Any, kind: Any) -> dict[str, Any]:
    """Rank 0's part: the cache folder of this config's key, built (at most once across processes) when missing or
    damaged. Returns {"hit", "key", "path", "bytes", "rebuilt_damaged", "waited_s" (for the lock)}."""
    key, described = cache_key(cfg, tokenizer, kind)
    root = cache_root(cfg)
    folder = root / key
    hit, damaged = verified(folder, key) is not None, False
    waited = 0.0
    if not hit:
        asked = time.time()
        with locked(root / f"{key}.lock"):
            waited = time.time() - asked
            hit = verified(folder, key) is not None  # another job may have built it while this one waited
            if not hit:
                damaged = folder.exists()
                if damaged:  # never used: moved aside (a process may still map it), then removed
                    aside = root / f"{key}.damaged-{os.getpid()}-{time.time_ns()}"
                    os.replace(folder, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                for stale in root.glob(f"{key}.tmp-*"):  # a build killed midway (this lock is free: none runs)
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = root / f"{key}.tmp-{os.getpid()}"
                _write(tmp, encode_data(cfg, tokenizer, template, kind), key, described)
                os.replace(tmp, folder)
                fsync_path(root)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"hit": hit, "key": key, "path": str(folder), "bytes": size, "rebuilt_damaged": damaged,
            "waited_s": waited}


def open_cache(folder: Path, kind: Any) -> Prepared:
    """A cache folder rank 0 has checked, memory-mapped."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return Prepared(examples={s: MappedExamples(folder / f"{s}.arrow", kind) for s in SPLITS},
                    stats={s: TokenizeStats(**manifest["stats"][s]) for s in SPLITS},
                    conversations={s: MappedConversations(folder / f"{s}_conversations.arrow") for s in SPLITS},
                    mix=dict(manifest["mix"]))


def cached_data(cfg: Any, tokenizer: Any, template: Any, kind: Any) -> Prepared:
    """Every rank of the job: rank 0 finds or builds the folder, the others wait for its answer; all map it."""
    from hydralign.distributed.one_answer import from_rank_zero

    report = from_rank_zero(lambda: ensure_cache(cfg, tokenizer, template, kind))
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        print(f"hydralign: rank {rank} maps the tokenized cache rank 0 {'found' if report['hit'] else 'built'}: "
              f"{report['path']}", flush=True)
    prepared = open_cache(Path(report["path"]), kind)
    prepared.cache = report
    return prepared


def prepare_data(cfg: Any, tokenizer: Any, template: Any, kind: Any) -> Prepared:
    """The run's encoded data: from the tokenized cache (read files, hub sets and mixtures, unless
    ``data.cache=false``), else encoded here. The embedded task is generated, never cached."""
    started = time.time()
    if cfg.data.cache and cfg.data.source != "arithmetic":
        prepared = cached_data(cfg, tokenizer, template, kind)
    else:
        prepared = encode_data(cfg, tokenizer, template, kind)
    prepared.seconds = time.time() - started
    return prepared
