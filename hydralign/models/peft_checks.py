"""Checks on ``cfg.peft`` that need no torch, so the pure plan can refuse a bad PEFT setup before
anything is loaded or any MLflow run exists. Every message names the override that fixes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydralign.config.read import setting
from hydralign.errors import ConfigError

PEFT_NAMES = ("none", "lora", "qlora")
LORA_BIASES = ("none", "all", "lora_only")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
QLORA_STRATEGIES = ("auto", "ddp")  # one process per GPU, each holding the whole 4-bit base




def check_peft(cfg: Any) -> None:
    """Refuse an unusable ``peft`` group given the rest of the config (hardware, model).

    ``cfg`` is the composed config (a DictConfig, a dict, or anything with attributes); a config
    without a ``peft`` node means ``peft=none``. Raises :class:`ConfigError`; returns nothing."""
    name = setting(cfg, "peft.name")
    if name not in PEFT_NAMES:
        raise ConfigError(f"peft={name} is unknown; choose one of: {', '.join(PEFT_NAMES)}")
    load_in_4bit = bool(setting(cfg, "peft.load_in_4bit"))
    if name != "qlora":
        if load_in_4bit:
            raise ConfigError(f"peft.load_in_4bit=true needs peft=qlora (adapters on the 4-bit base); "
                              f"with peft={name} set peft.load_in_4bit=false")
        if name == "none":
            return
    _check_lora(cfg)
    if name == "qlora":
        _check_qlora(cfg, load_in_4bit)


def _check_lora(cfg: Any) -> None:
    r = setting(cfg, "peft.r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"peft.r={r} must be an integer >= 1 (the adapter rank, e.g. peft.r=16)")
    alpha = setting(cfg, "peft.alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"peft.alpha={alpha} must be > 0 (the adapter output is scaled by alpha / r)")
    dropout = setting(cfg, "peft.dropout")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"peft.dropout={dropout} must be in [0, 1), e.g. peft.dropout=0.05")
    bias = setting(cfg, "peft.bias")
    if bias not in LORA_BIASES:
        raise ConfigError(f"peft.bias={bias} is unknown; choose one of: {', '.join(LORA_BIASES)}")
    targets = setting(cfg, "peft.target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            raise ConfigError(f"peft.target_modules={targets} must be all-linear or a list of module names, "
                              "e.g. peft.target_modules=[q_proj,v_proj]")
    elif not (isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"peft.target_modules={targets} must be all-linear or a non-empty list of module "
                          "names, e.g. peft.target_modules=[q_proj,v_proj]")


def _check_qlora(cfg: Any, load_in_4bit: bool) -> None:
    if not load_in_4bit:
        raise ConfigError("peft=qlora with peft.load_in_4bit=false is plain LoRA; use peft=lora, "
                          "or set peft.load_in_4bit=true")
    if setting(cfg, "hardware.accelerator") != "gpu":
        raise ConfigError("peft=qlora quantizes the base to 4 bits with bitsandbytes, which needs CUDA; use "
                          "peft=lora on this hardware or a GPU preset such as hardware=1xV100")
    if setting(cfg, "model.source") != "pretrained":
        raise ConfigError(f"peft=qlora quantizes pretrained weights, but model={setting(cfg, 'model.name')} is "
                          f"built from config with random init (model.source={setting(cfg, 'model.source')}); "
                          "use peft=lora, or a pretrained model such as model=llama31_8b")
    quant_type = setting(cfg, "peft.quant_type")
    if quant_type not in QUANT_TYPES:
        raise ConfigError(f"peft.quant_type={quant_type} is unknown; choose one of: {', '.join(QUANT_TYPES)}")
    compute = setting(cfg, "peft.compute_dtype")
    if compute not in COMPUTE_DTYPES:
        raise ConfigError(f"peft.compute_dtype={compute} is unknown; choose one of: {', '.join(COMPUTE_DTYPES)}")
    gpu = str(setting(cfg, "hardware.gpu") or "")
    if gpu.startswith("V100") and compute == "bfloat16":
        raise ConfigError(f"hardware.gpu={gpu} has no bf16; set peft.compute_dtype=float16")
    strategy = setting(cfg, "hardware.strategy")
    if strategy not in QLORA_STRATEGIES:
        raise ConfigError(f"peft=qlora runs with hardware.strategy auto or ddp (each GPU holds the whole 4-bit "
                          f"base); sharding it with hardware.strategy={strategy} is not supported, use "
                          "hardware.strategy=ddp or peft=lora")
