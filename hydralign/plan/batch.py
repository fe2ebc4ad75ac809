"""The batch part of the plan (pure): effective batch = world size x micro batch x accumulation, derived and checked,
every refusal naming both numbers and the overrides that fix it."""

from __future__ import annotations

from typing import Any

from hydralign.config.read import setting
from hydralign.errors import ConfigError


def divisibility_hint(effective: int, world: int, micro: int) -> str:
    per_device = effective / world
    fixes = []
    if effective % world == 0:
        micros = [m for m in range(micro, 0, -1) if (effective // world) % m == 0]
        if micros:
            m = micros[0]
            fixes.append(f"batch.micro={m} (grad_accum {effective // (world * m)})")
    unit = world * micro
    lower, upper = (effective // unit) * unit, (effective // unit + 1) * unit
    fixes.extend(f"batch.effective={v}" for v in (lower, upper) if v > 0)
    return (f"batch.effective={effective} is not divisible by world_size {world} x batch.micro {micro} "
            f"= {unit} (that is {per_device:g} examples per device per step). Fix with one of: "
            + ", ".join(fixes))


def batch_sizes(cfg: Any, world: int) -> tuple[int, int, int, int]:
    """(effective, micro, grad_accum, global_micro) of an offline method, checked."""
    effective = int(setting(cfg, "batch.effective"))
    if effective < 1:
        raise ConfigError(f"batch.effective={effective} must be >= 1 (examples per optimizer step over all "
                          f"devices), e.g. batch.effective={32 * world}")
    micro_given = setting(cfg, "batch.micro")
    if micro_given is None:
        max_micro = int(setting(cfg, "batch.max_micro"))
        if effective % world:
            raise ConfigError(f"batch.effective={effective} is not divisible by world_size {world}; use a "
                              f"multiple of {world}, e.g. batch.effective={(effective // world + 1) * world}")
        per_device = effective // world
        micro = max(m for m in range(1, min(per_device, max(1, max_micro)) + 1) if per_device % m == 0)
    else:
        micro = int(micro_given)
    if micro < 1 or effective < 1:
        raise ConfigError(f"batch.micro={micro} and batch.effective={effective} must both be >= 1")
    global_micro = world * micro
    if effective < global_micro:
        raise ConfigError(f"batch.effective={effective} is smaller than world_size {world} x batch.micro "
                          f"{micro} = {global_micro}; lower batch.micro to "
                          f"{max(1, effective // world)} or raise batch.effective to {global_micro}")
    if effective % global_micro:
        raise ConfigError(divisibility_hint(effective, world, micro))
    grad_accum = effective // global_micro
    given = setting(cfg, "batch.grad_accum")
    if given is not None and int(given) != grad_accum:
        raise ConfigError(f"batch.grad_accum={given} disagrees with the derived grad_accum {grad_accum} "
                          f"(= batch.effective {effective} / (world_size {world} x batch.micro {micro})); "
                          "drop batch.grad_accum or change batch.effective")
    return effective, micro, grad_accum, global_micro
