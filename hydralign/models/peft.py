"""PEFT on the policy (``peft=none|lora|qlora``) through Hugging Face ``peft``.

- LoRA (Hu et al. 2021, arXiv 2106.09685): frozen base, trainable low-rank ``B @ A`` beside each
  targeted Linear, output scaled by ``alpha / r``. ``all-linear`` targets every Linear but the output
  head (QLoRA paper / Firefly).
- QLoRA (Dettmers et al. 2023, arXiv 2305.14314): the same adapters on a base loaded in 4 bits by
  bitsandbytes (``quantization_kwargs`` for ``from_pretrained``), CUDA only.

Order of use: ``build_model(mcfg, tok, seed, pcfg)`` (quantizes a pretrained base for qlora), then
``load_weights`` for ``init_from`` (full weights, before wrapping), then ``apply_peft``. With PEFT the
frozen reference of DPO is the same model under ``adapters_disabled`` (no second copy of the weights),
as TRL does when it gets ``ref_model=None`` and a PEFT model. Export writes ``save_adapters`` and,
for ``peft.merge_on_export``, a merged full model (``merged_copy`` or ``merge_saved_adapters``).

The config checks live in the torch-free ``peft_checks`` (called by the plan).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hydralign.errors import ConfigError
from hydralign.models.peft_checks import PEFT_NAMES

__all__ = ["apply_peft", "quantization_kwargs", "is_peft", "adapters_disabled", "save_adapters",
           "merged_copy", "merge_saved_adapters", "trainable_summary", "lora_config"]

QLORA_EXTRA = "pip install 'hydralign[qlora]'"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantization_kwargs(pcfg: Any, local_rank: int | None = None) -> dict[str, Any]:
    """``from_pretrained`` kwargs that load the base in 4 bits (``peft.load_in_4bit``), else ``{}``.

    The 4-bit weights are created on the GPU while loading, so the model is placed on this process's
    GPU (``local_rank``, default ``$LOCAL_RANK`` or 0) rather than whatever device is current."""
    if pcfg is None or not getattr(pcfg, "load_in_4bit", False):
        return {}
    try:
        import bitsandbytes  # noqa: F401  (only to fail early with the fix)
    except ImportError as err:
        raise ConfigError(f"peft={pcfg.name} loads the base in 4 bits with bitsandbytes, which is not "
                          f"installed: {QLORA_EXTRA} (CUDA only), or use peft=lora") from err
    from transformers import BitsAndBytesConfig

    if pcfg.compute_dtype not in _TORCH_DTYPES:
        raise ConfigError(f"peft.compute_dtype={pcfg.compute_dtype} must be one of {', '.join(_TORCH_DTYPES)}")
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=pcfg.quant_type,
                               bnb_4bit_use_double_quant=bool(pcfg.double_quant),
                               bnb_4bit_compute_dtype=_TORCH_DTYPES[pcfg.compute_dtype])
    return {"quantization_config": quant, "device_map": {"": rank}}


def lora_config(pcfg: Any):
    """The ``peft.LoraConfig`` for ``cfg.peft`` (causal LM; ``all-linear`` spares the output head)."""
    from peft import LoraConfig

    targets = pcfg.target_modules
    targets = targets if isinstance(targets, str) else [str(t) for t in targets]
    return LoraConfig(task_type="CAUSAL_LM", r=int(pcfg.r), lora_alpha=float(pcfg.alpha),
                      lora_dropout=float(pcfg.dropout), target_modules=targets, bias=pcfg.bias)


def _checkpointing_on(model: torch.nn.Module) -> bool:
    # transformers 5 renames is_gradient_checkpointing (now a deprecated alias) to is_activation_checkpointing
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def apply_peft(model: torch.nn.Module, pcfg: Any) -> torch.nn.Module:
    """``peft=none`` (or no ``pcfg``): the model itself. ``lora``/``qlora``: a ``PeftModel`` wrapping
    it, with only the adapter weights (and biases for ``peft.bias=all|lora_only``) trainable.

    For qlora the base must already be in 4 bits (``build_model`` with ``quantization_kwargs``);
    ``prepare_model_for_kbit_training`` then freezes it, casts the layers left in 16 bits (norms,
    embeddings, head) to fp32 for stable training, and keeps the model's gradient-checkpointing setting
    (non-reentrant, so the frozen embeddings need no ``requires_grad`` hook)."""
    name = "none" if pcfg is None else pcfg.name
    if name not in PEFT_NAMES:
        raise ConfigError(f"peft={name} is unknown; choose one of: {', '.join(PEFT_NAMES)}")
    if name == "none":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if name == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ConfigError("peft=qlora needs the base loaded in 4 bits (build_model with the peft config "
                              "and model.source=pretrained); use peft=lora for a full-precision base")
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=_checkpointing_on(model),
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, lora_config(pcfg))


def is_peft(model: torch.nn.Module) -> bool:
    """True for a model wrapped by ``apply_peft`` (a ``peft.PeftModel``). Without importing peft (a second of
    start-up in every process): a PeftModel exists only once peft has been imported."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block the model computes its frozen base model's outputs (LoRA paths skipped);
    on exit the adapters are active again. A no-op for a plain model.

    This is DPO's reference with PEFT: ``with torch.no_grad(), adapters_disabled(policy): ref = policy(x)``.
    peft sets the adapters' ``requires_grad`` to False inside the block and back on exit, so run no
    backward (and no optimizer step) inside it. peft restores the flag on the parameters registered at
    exit; under FSDP2 with ``reshard_after_forward=False`` those are the gathered copies, not the shards
    the optimizer holds (which FSDP2 reads to decide what to reduce), so the trainable parameters seen
    on entry get theirs back too."""
    if is_peft(model):
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            with model.disable_adapter():
                yield model
        finally:
            for p in trainable:
                p.requires_grad_(True)
    else:
        yield model


def save_adapters(model: torch.nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """The adapters alone (``adapter_config.json`` + ``adapter_model.safetensors``; resized embeddings
    too when the vocabulary grew), plus the tokenizer if given, written to ``<out_dir>.tmp`` and renamed
    into place. Reload with ``peft.PeftModel.from_pretrained(base, out_dir)``."""
    if not is_peft(model):
        raise ValueError("save_adapters needs a PEFT model (peft=lora|qlora); export a plain model with "
                         "checkpoints.export_hf")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters merged into its weights (``W + (alpha/r) B A``),
    built on a deep copy so the training model keeps its adapters. Save it with ``save_pretrained``
    (``checkpoints.export_hf``): it loads with ``AutoModelForCausalLM.from_pretrained``, no peft needed.
    A plain model is returned as is. Costs a second full copy on the model's device.

    A 4-bit base (qlora) is refused: merging into 4-bit weights would round the result; merge the saved
    adapters into a base loaded in full precision with ``merge_saved_adapters`` instead."""
    if not is_peft(model):
        return model
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        raise ValueError("merged_copy cannot merge into a 4-bit base; save_adapters, then load the base "
                         "without quantization and call merge_saved_adapters(base, adapter_dir)")
    return copy.deepcopy(model).merge_and_unload()


def merge_saved_adapters(base: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """Load the adapters saved by ``save_adapters`` onto ``base`` (a full-precision model with the
    same architecture and vocabulary) and merge them in: the export path for qlora."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def trainable_summary(model: torch.nn.Module) -> str:
    """``"trainable 1.2M / 8.0B params (0.02%)"``. A 4-bit weight packs two values per stored byte
    (per element of its storage dtype, times its size), so it is counted in weights, not storage."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 * p.element_size() if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    share = 100.0 * trainable / total if total else 0.0
    shown = f"{share:.1f}" if share >= 1 else f"{share:.2g}"
    return f"trainable {_human(trainable)} / {_human(total)} params ({shown}%)"
