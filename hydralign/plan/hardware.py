"""The hardware part of the plan (pure): nodes, devices, accelerator, strategy and precision, and what a GPU cannot
run (V100: no bf16, no flash-attention 2)."""

from __future__ import annotations

from typing import Any

from hydralign.config.choices import PRECISIONS, STRATEGIES
from hydralign.config.read import setting
from hydralign.errors import ConfigError


def check_hardware(cfg: Any) -> tuple[int, int, str, str, str]:
    """(nodes, devices per node, accelerator, strategy, precision), each checked."""
    nodes = int(setting(cfg, "hardware.nodes"))
    devices = int(setting(cfg, "hardware.devices_per_node"))
    if nodes < 1 or devices < 1:
        raise ConfigError(f"hardware.nodes={nodes} and hardware.devices_per_node={devices} must both be >= 1")
    accelerator = setting(cfg, "hardware.accelerator")
    strategy = setting(cfg, "hardware.strategy")
    precision = str(setting(cfg, "hardware.precision"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"hardware.strategy={strategy} is unknown; choose one of: {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"hardware.precision={precision} is unknown; choose one of: {', '.join(PRECISIONS)}")
    if accelerator == "cpu" and precision.startswith("16"):
        raise ConfigError(f"hardware.precision={precision} needs a GPU; on CPU use hardware.precision=32-true "
                          "or bf16-mixed")
    gpu = str(setting(cfg, "hardware.gpu") or "")
    if gpu.startswith("V100"):
        if precision.startswith("bf16"):
            raise ConfigError(f"hardware.gpu={gpu} has no bf16; set hardware.precision=16-mixed")
        if setting(cfg, "model.attn_implementation") == "flash_attention_2":
            raise ConfigError(f"hardware.gpu={gpu} cannot run flash-attention 2 (Ampere or newer); "
                              "set model.attn_implementation=sdpa")
    return nodes, devices, accelerator, strategy, precision
