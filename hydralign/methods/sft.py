"""Supervised fine-tuning: next-token cross-entropy on the completion (assistant) tokens."""

from __future__ import annotations

import torch

from hydralign.losses.token_ce import token_nll_sum
from hydralign.methods.base import PostTrainingModule


class SFTModule(PostTrainingModule):
    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, tokens = token_nll_sum(logits, batch["labels"])
        return loss_sum, tokens, {}
