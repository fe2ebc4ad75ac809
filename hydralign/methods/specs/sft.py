"""Supervised fine-tuning (``method=sft``): next-token cross-entropy on the completion tokens."""

from __future__ import annotations

from dataclasses import dataclass

from hydralign.config.schema import MethodConfig
from hydralign.methods.spec import MethodSpec


@dataclass
class SFTConfig(MethodConfig):
    """Supervised fine-tuning: token cross-entropy over the whole accumulated batch's loss tokens."""

    completion_only: bool = True  # loss on assistant/completion tokens only (false: every token)


SPEC = MethodSpec("sft", SFTConfig, data_kind="sft", unit="tokens", module="hydralign.methods.sft:SFTModule", order=0,
                  packing=True, chunked_loss=True)
