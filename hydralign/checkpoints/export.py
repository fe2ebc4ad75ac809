"""A training checkpoint as a Hugging Face model directory, without the run that wrote it: the policy is
rebuilt from that run's resolved ``config.yaml`` (architecture, tokenizer, chat template, adapters), its
weights read from the checkpoint (a ``.ckpt`` file, or an FSDP2 folder of shards read without any process
group), LoRA adapters merged, and ``save_pretrained`` written under a temporary name and renamed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from hydralign.errors import ConfigError


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The policy's weights (``model.`` prefix removed) from a ``.ckpt`` file or an FSDP2 checkpoint folder."""
    if path.is_dir():
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        state = _load_state_dict_from_keys(keys={"state_dict"}, checkpoint_id=str(path))["state_dict"]
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


def export_checkpoint(ckpt: Path, run_config: Path, out: Path) -> Path:
    from omegaconf import OmegaConf

    from hydralign.models import build_model, tokenizer_and_template
    from hydralign.models.peft import apply_peft, is_peft, merged_copy

    cfg = OmegaConf.load(run_config)
    if cfg.peft.load_in_4bit:
        raise ConfigError(f"{ckpt} is a QLoRA run's checkpoint: export it from that run (its adapter/ and merged "
                          "hf_model/) rather than from the 4-bit training state")
    tokenizer, template = tokenizer_and_template(cfg.model)
    model = apply_peft(build_model(cfg.model, tokenizer, int(cfg.seed)), cfg.peft)
    state = checkpoint_weights(ckpt)  # a LoRA run's keys are PEFT's own (base_model.model....)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"{ckpt} does not match the model its run's config.yaml builds: missing "
                          f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if is_peft(model):
        model = merged_copy(model)
    # What the run generated with, as its own hf_model/ says it (checkpoints.saving.export_hf): generation stops at
    # the template's end of turn, not only at the tokenizer's EOS
    model.generation_config.eos_token_id = list(tokenizer.convert_tokens_to_ids(template.stop_tokens(
        tokenizer.eos_token)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(f"{out.name}.tmp.{os.getpid()}")  # this process's own: never another's half-write
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if (out / "config.json").is_file():  # written meanwhile by another process: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    shutil.rmtree(out, ignore_errors=True)  # an incomplete folder (no config.json) left by a crash
    os.replace(tmp, out)
    return out
