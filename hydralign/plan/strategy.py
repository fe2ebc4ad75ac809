"""What a strategy can run (pure): DeepSpeed ZeRO stages and offload, FSDP2 options and precision, and frozen models
ZeRO-3 would hold whole on every GPU (refused with the method's own fix first)."""

from __future__ import annotations

from typing import Any, Optional

from hydralign.config.read import schema_default, setting
from hydralign.errors import ConfigError

ZERO_STAGES = (1, 2, 3)




# --- refusals (pure) -------------------------------------------------------------------------------
def check_strategy(cfg: Any, held_frozen: tuple[str, ...] = (), zero3_fix: Optional[str] = None) -> None:
    """Refuse what ``hardware.strategy`` cannot run, naming what to set instead. ``held_frozen``: the
    frozen models the method keeps in memory while training (e.g. DPO's reference copy); ``zero3_fix``: the
    method's own way not to hold them (its spec's), offered first when ZeRO-3 would."""
    strategy = setting(cfg, "hardware.strategy")
    precision = str(setting(cfg, "hardware.precision"))
    stage = setting(cfg, "hardware.zero_stage")
    offload_optimizer = bool(setting(cfg, "hardware.zero_offload_optimizer"))
    offload_params = bool(setting(cfg, "hardware.zero_offload_params"))

    if strategy != "deepspeed":
        if stage is not None:
            raise ConfigError(f"hardware.zero_stage={stage} applies to DeepSpeed only; with hardware.strategy="
                              f"{strategy} set hardware.zero_stage=null, or hardware.strategy=deepspeed")
        for key, on in (("zero_offload_optimizer", offload_optimizer), ("zero_offload_params", offload_params)):
            if on:
                raise ConfigError(f"hardware.{key}=true applies to DeepSpeed only; with hardware.strategy="
                                  f"{strategy} set hardware.{key}=false, or hardware.strategy=deepspeed")

    timeout = setting(cfg, "hardware.dist_timeout_min")
    if timeout is not None and float(timeout) <= 0:
        raise ConfigError(f"hardware.dist_timeout_min={timeout}: give the minutes a collective may wait (> 0), or "
                          "null for Lightning's 30")
    for key in ("fsdp_reshard_after_forward", "fsdp_accumulate_unsharded"):
        value, default = bool(setting(cfg, f"hardware.{key}")), schema_default(f"hardware.{key}")
        if strategy != "fsdp" and value != default:
            raise ConfigError(f"hardware.{key}={str(value).lower()} applies to FSDP2 only; with hardware.strategy="
                              f"{strategy} set hardware.{key}={str(default).lower()}, or hardware.strategy=fsdp")
    if strategy == "fsdp":
        if precision == "16-mixed":
            raise ConfigError("hardware.strategy=fsdp (FSDP2) has no fp16 loss scaling: set hardware.precision="
                              "bf16-mixed (A100/H100), or keep 16-mixed with hardware.strategy=ddp or deepspeed "
                              "(V100)")
    elif strategy == "deepspeed":
        if stage not in ZERO_STAGES:
            raise ConfigError(f"hardware.strategy=deepspeed needs hardware.zero_stage=1, 2 or 3 (got {stage})")
        if offload_params and stage != 3:
            raise ConfigError("hardware.zero_offload_params=true needs partitioned parameters, which only ZeRO-3 "
                              "has; set hardware.zero_stage=3 or hardware.zero_offload_params=false "
                              "(hardware.zero_offload_optimizer works with every stage)")
        if stage == 3 and held_frozen:
            instead = f"{zero3_fix}, or " if zero3_fix else ""
            raise ConfigError(f"hardware.zero_stage=3 partitions the policy but not the {', '.join(held_frozen)} "
                              f"this method keeps (it would sit whole on every GPU): set {instead}"
                              "hardware.strategy=fsdp (shards it too), or hardware.zero_stage=2")
