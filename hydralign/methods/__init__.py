"""Post-training methods: one LightningModule base, one small subclass per method."""

from __future__ import annotations


def method_class(name: str):
    if name == "sft":
        from hydralign.methods.sft import SFTModule

        return SFTModule
    raise ValueError(f"method={name} is not implemented")
