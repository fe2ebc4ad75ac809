"""The record stage's model files: ``hf_model/`` (the full model; adapters merged in with PEFT) and ``adapter/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def export_model(model: Any, tokenizer: Any, run_dir: Path, stop_ids: list[int], cfg: DictConfig) -> None:
    """hf_model/: the full model (adapters merged in with PEFT); adapter/: the adapters alone."""
    from hydralign.checkpoints.saving import export_hf
    from hydralign.models.peft import is_peft, merged_copy, save_adapters

    if not is_peft(model):
        export_hf(model, tokenizer, run_dir / "hf_model", stop_ids)
        return
    save_adapters(model, run_dir / "adapter", tokenizer)
    if not cfg.peft.merge_on_export:
        return
    if cfg.peft.load_in_4bit:  # a 4-bit base cannot take merged weights: merge into an unquantized one
        from hydralign.models import build_model, load_weights
        from hydralign.models.peft import merge_saved_adapters

        base = build_model(cfg.model, tokenizer, cfg.seed)
        if cfg.init_from:
            load_weights(base, cfg.init_from)
        export_hf(merge_saved_adapters(base, run_dir / "adapter"), tokenizer, run_dir / "hf_model", stop_ids)
    else:
        export_hf(merged_copy(model), tokenizer, run_dir / "hf_model", stop_ids)
