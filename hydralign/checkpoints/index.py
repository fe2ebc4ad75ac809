"""``checkpoints/index.json``: what each checkpoint of a run holds (its optimizer step and data epoch) and
what every validation (and lm-eval evaluation) measured, so ``<run>:best``, ``:step=N`` and ``:epoch=N`` pick a checkpoint from
recorded facts, never from file names. Written by rank 0 only (atomically: temporary file, then rename);
entries whose file was deleted (keep-last-K, keep-best-K) are dropped at each write. Pure JSON, no torch.

    {"monitor": "val/exact_match", "mode": "max",
     "checkpoints": {"step000400.ckpt": {"step": 400, "epoch": 1.0}, "best-step000200.ckpt": {...}},
     "validations": {"200": {"val/loss": 0.41, "val/exact_match": 0.62, "eval/gsm8k/exact_match_strict-match": 0.1},
                     ...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

INDEX = "index.json"


def read(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / INDEX
    if not path.is_file():
        return {"checkpoints": {}, "validations": {}}
    return json.loads(path.read_text())


def _write(ckpt_dir: Path, index: dict[str, Any]) -> None:
    index["checkpoints"] = {name: entry for name, entry in index["checkpoints"].items()
                            if (ckpt_dir / name).exists()}
    tmp = ckpt_dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, ckpt_dir / INDEX)


def record_checkpoint(ckpt_dir: Path, name: str, step: int, steps_per_epoch: Optional[int],
                      monitor: Optional[str] = None, mode: Optional[str] = None) -> None:
    ckpt_dir = Path(ckpt_dir)
    index = read(ckpt_dir)
    epoch = round(step / steps_per_epoch, 6) if steps_per_epoch else None
    index["checkpoints"][name] = {"step": int(step), "epoch": epoch}
    if monitor:
        index.update(monitor=monitor, mode=mode)
    _write(ckpt_dir, index)


def record_validation(ckpt_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Add what was measured at ``step`` to what is recorded there: a validation's ``val/*`` and lm-eval's
    ``eval/*`` (hydralign.harness) arrive separately, in either order; a name measured again is replaced."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    index = read(ckpt_dir)
    recorded = index["validations"].setdefault(str(int(step)), {})
    recorded.update({k: float(v) for k, v in metrics.items()})
    _write(ckpt_dir, index)


def entries(ckpt_dir: Path) -> list[dict[str, Any]]:
    """Every checkpoint that exists: name, path, step, epoch and the metrics of the validation at its
    step (empty when none ran there), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    index = read(ckpt_dir)
    rows = []
    for name, entry in index["checkpoints"].items():
        path = ckpt_dir / name
        if path.exists():
            rows.append({"name": name, "path": path, "step": entry["step"], "epoch": entry.get("epoch"),
                         "metrics": index["validations"].get(str(entry["step"]), {})})
    return sorted(rows, key=lambda r: (r["step"], r["name"]))
