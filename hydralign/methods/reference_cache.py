"""Precomputed reference log-probs (``method.precompute_ref=true``), cached on disk and shared.

The cache key is made of what changes the numbers and nothing else: the reference weights' identity
(init_from / pretrained files by content hash, or the random-init architecture and seed), their
dtype and quantization, the compute precision, and the data as tokenized (a hash of every pair's
token ids and loss mask, which already depends on the data files' content, the tokenizer, the chat
template, the maximum length and the truncation rule; those are also written out readably). Beta,
lr and the loss type are not in it, so every job of a beta/lr sweep reads one cache.

Concurrency and integrity: the first job takes an exclusive file lock, computes, writes
``<key>.safetensors.tmp`` and renames it; jobs that start at the same time wait on the lock and then
read. A file whose key, shapes or checksum disagree (partial, corrupt, stale) is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from hydralign.checked_files import fsync_path, hash_file, locked

SPLITS = ("train", "val")


def weights_identity(cfg: Any) -> dict[str, Any]:
    """What the reference's weights are, without reading the model: file contents by hash where the
    weights come from files, else the random-init recipe (architecture and seed)."""
    from hydralign.checkpoints.references import resolve_weights

    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    ident: dict[str, Any] = {"dtype": mcfg["dtype"], "precision": cfg.hardware.precision,
                             "quantization": {k: cfg.peft[k] for k in ("load_in_4bit", "quant_type",
                                                                        "double_quant", "compute_dtype")}
                             if cfg.peft.load_in_4bit else None}
    files: list[Path] = []
    if cfg.init_from:
        path = resolve_weights(cfg.init_from)
        if path.is_dir():  # an HF directory's weights, or every shard of a sharded checkpoint
            files = sorted(path.glob("*.safetensors")) or sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files = [path]
        ident["init_from"] = str(path)
    elif mcfg["source"] == "pretrained":
        ident.update(name_or_path=mcfg["name_or_path"], revision=mcfg["revision"])
        local = Path(str(mcfg["name_or_path"])).expanduser()
        files = sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")) if local.is_dir() else []
    else:
        ident.update(architecture={k: v for k, v in mcfg.items() if k not in ("name", "num_parameters")},
                     seed=int(cfg.seed))
    if files:
        h = hashlib.sha256()
        for f in files:
            hash_file(f, h)
        ident["weights_sha256"] = h.hexdigest()
    return ident


def examples_digest(examples: list) -> str:
    """sha256 of every example's sequences' token ids and labels, in order (a pair: chosen, rejected; unpaired
    feedback: the completion and its KL twin)."""
    h = hashlib.sha256()
    for ex in examples:
        for seq in ex.sequences():
            h.update(torch.tensor(seq.input_ids, dtype=torch.int64).numpy().tobytes())
            h.update(torch.tensor(seq.labels, dtype=torch.int64).numpy().tobytes())
            h.update(b"|")
    return h.hexdigest()


def cache_key(cfg: Any, data: Any) -> tuple[str, dict[str, Any]]:
    dcfg = cfg.data
    files = {}
    for f in list(dcfg.train_files) + list(dcfg.val_files):
        h = hashlib.sha256()
        hash_file(Path(f).expanduser(), h)
        files[str(f)] = h.hexdigest()
    described = {
        "reference": weights_identity(cfg),
        "data": {"source": dcfg.source, "files": files, "hub_id": dcfg.hub_id, "hub_config": dcfg.hub_config,
                 "arithmetic": OmegaConf.to_container(dcfg.arithmetic) if dcfg.source == "arithmetic" else None,
                 "data_seed": int(cfg.seed) if dcfg.source == "arithmetic" or not dcfg.val_files else None},
        "tokenizer": {"name": cfg.model.tokenizer or cfg.model.name_or_path, "size": len(data.tokenizer)},
        "template": cfg.model.chat_template, "max_seq_len": int(dcfg.max_seq_len), "truncation": dcfg.overlong,
        "tokens": {s: examples_digest(getattr(data, f"{s}_examples")) for s in SPLITS},
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
    return key, described


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def read_checked(path: Path, key: str, names: set[str]) -> Optional[dict[str, torch.Tensor]]:
    """The tensors of a cache file written by ``write_checked``, or None when it is missing, truncated, of
    another key, holds other tensors than ``names``, or fails its checksum (never used, recomputed)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception:  # truncated or not a safetensors file at all
        return None
    if meta.get("key") != key or set(tensors) != names or meta.get("checksum") != _checksum(tensors):
        return None
    return tensors


def write_checked(cache_dir: Path, path: Path, key: str, tensors: dict[str, torch.Tensor],
                  described: dict[str, Any]) -> None:
    """``tensors`` into ``path`` with its key and checksum in the metadata (temporary name, fsync, rename),
    and ``<key>.json`` describing what it holds. Call it holding ``locked``."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"key": key, "checksum": _checksum(tensors)})
    fsync_path(tmp)
    os.replace(tmp, path)
    (cache_dir / f"{key}.json").write_text(json.dumps(described, indent=2, sort_keys=True))


def _load_valid(path: Path, key: str, sizes: dict[str, int]) -> Optional[dict[str, torch.Tensor]]:
    tensors = read_checked(path, key, set(SPLITS))
    if tensors is None or any(tuple(tensors[s].shape) != (sizes[s], 2) for s in SPLITS):
        return None
    return tensors


def load_or_compute(cache_dir: Path, key: str, described: dict[str, Any], sizes: dict[str, int],
                    compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The cached tensors ({split: [N, 2] float32}) and a report {"hit": bool, "seconds": ..., "path": ...}.
    ``compute`` runs at most once across every process sharing ``cache_dir``."""
    path = cache_dir / f"{key}.safetensors"
    started = time.time()
    with locked(cache_dir / f"{key}.lock"):
        cached = _load_valid(path, key, sizes)
        if cached is not None:
            return cached, {"hit": True, "seconds": time.time() - started, "path": str(path)}
        stale = path.is_file()
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in compute().items()}
        write_checked(cache_dir, path, key, tensors, described)
    return tensors, {"hit": False, "recomputed_stale": stale, "seconds": time.time() - started, "path": str(path)}


def default_cache_dir(cfg: Any) -> Path:
    configured = cfg.method.ref_cache_dir
    return Path(configured).expanduser().resolve() if configured else Path.cwd() / "outputs" / "cache" / "reference_logps"


@torch.no_grad()
def compute_logps(policy: torch.nn.Module, examples: list, pad_id: int, batch_size: int,
                  device: torch.device) -> torch.Tensor:
    """[N, 2] summed log-probs of each example's two sequences (chosen, rejected; or completion, KL twin) under the
    reference = the initial policy (adapters off)."""
    from hydralign.data.batching import collate_items
    from hydralign.methods.dpo import pair_logps
    from hydralign.models.peft import adapters_disabled

    was_training, out = policy.training, []
    policy.eval()
    with adapters_disabled(policy):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = collate_items(chunk, list(range(i, i + len(chunk))), pad_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logps, _ = pair_logps(policy, batch)
            out.append(torch.stack(logps.split(len(chunk)), dim=1).cpu())
    policy.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)
