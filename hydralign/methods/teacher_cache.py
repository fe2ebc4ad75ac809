"""Sequence-level distillation's teacher generations (``method.loss=seqkd``), made once and cached on disk.

Like DPO's precomputed reference log-probs (``reference_cache.py``, whose lock and file hashing this
shares), the key holds what changes the generations and nothing else: the teacher's weights by content
hash, their dtype and the compute precision, the decoding rule (greedy, ``max_new_tokens``, stop tokens)
and every prompt's token ids per split (which already depend on the data, tokenizer, chat template and
maximum length). The learning rate, temperature or student are not in it, so every job of a sweep over
them reads one cache. The first process takes the lock and generates; the others wait, then read; a file
whose key, sizes or checksum disagree is generated again.

Stored per split: the completions' tokens concatenated (``<split>.tokens``) and their offsets
(``<split>.offsets``, N + 1 values), in a safetensors file with the key and a checksum as metadata.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from hydralign.checked_files import hash_file, locked
from hydralign.methods.reference_cache import read_checked, write_checked

SPLITS = ("train", "val")


def prompts_digest(prompts: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(torch.tensor(list(p), dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def cache_key(teacher_dir: Path, dtype: str, precision: str, max_new_tokens: int, stop_ids: Sequence[int],
              prompts: dict[str, Sequence[Sequence[int]]]) -> tuple[str, dict[str, Any]]:
    h = hashlib.sha256()
    for f in sorted(teacher_dir.glob("*.safetensors")):
        hash_file(f, h)
    described = {
        "teacher": {"path": str(teacher_dir), "weights_sha256": h.hexdigest(), "dtype": dtype,
                    "precision": precision},
        "decoding": {"rule": "greedy", "max_new_tokens": int(max_new_tokens), "stop_ids": sorted(stop_ids)},
        "prompts": {s: {"count": len(prompts[s]), "sha256": prompts_digest(prompts[s])} for s in SPLITS},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24], described


def _pack(completions: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
    out = {}
    for s in SPLITS:
        rows = completions[s]
        out[f"{s}.tokens"] = torch.tensor([t for r in rows for t in r], dtype=torch.int64)
        out[f"{s}.offsets"] = torch.tensor([0] + list(torch.tensor([len(r) for r in rows]).cumsum(0).tolist()),
                                           dtype=torch.int64)
    return out


def _unpack(tensors: dict[str, torch.Tensor]) -> dict[str, list[list[int]]]:
    out = {}
    for s in SPLITS:
        tokens, offsets = tensors[f"{s}.tokens"].tolist(), tensors[f"{s}.offsets"].tolist()
        out[s] = [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return out


def _load_valid(path: Path, key: str, sizes: dict[str, int]) -> Optional[dict[str, list[list[int]]]]:
    tensors = read_checked(path, key, {f"{s}.{k}" for s in SPLITS for k in ("tokens", "offsets")})
    if tensors is None or any(len(tensors[f"{s}.offsets"]) != sizes[s] + 1 for s in SPLITS):
        return None
    return _unpack(tensors)


def load_or_generate(cache_dir: Path, key: str, described: dict[str, Any], sizes: dict[str, int],
                     generate: Callable[[], dict[str, list[list[int]]]]
                     ) -> tuple[dict[str, list[list[int]]], dict[str, Any]]:
    """({split: one completion (token ids) per prompt}, {"hit", "seconds", "path"}); ``generate`` runs at
    most once across every process sharing ``cache_dir``."""
    path = cache_dir / f"{key}.safetensors"
    started = time.time()
    with locked(cache_dir / f"{key}.lock"):
        cached = _load_valid(path, key, sizes)
        if cached is not None:
            return cached, {"hit": True, "seconds": time.time() - started, "path": str(path)}
        completions = generate()
        write_checked(cache_dir, path, key, _pack(completions), described)
    return completions, {"hit": False, "seconds": time.time() - started, "path": str(path)}


def default_cache_dir(cfg: Any) -> Path:
    configured = cfg.method.cache_dir
    return (Path(configured).expanduser().resolve() if configured
            else Path.cwd() / "outputs" / "cache" / "teacher_generations")
