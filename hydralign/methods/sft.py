"""Supervised fine-tuning: next-token cross-entropy on the completion (assistant) tokens."""

from __future__ import annotations

import torch

from hydralign.losses.chunked_ce import chunked_token_nll_sum, decoder_hidden
from hydralign.losses.token_ce import token_nll_sum
from hydralign.methods.base import PostTrainingModule
from hydralign.models.inputs import model_inputs


class SFTModule(PostTrainingModule):
    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        chunk = self.cfg.model.get("loss_chunk_size")
        if chunk:  # the head and the loss over chunks of the loss positions (hydralign.losses.chunked_ce)
            hidden, head = decoder_hidden(self.model, batch)
            loss_sum, tokens = chunked_token_nll_sum(hidden, head.weight, batch["labels"], int(chunk), head.bias)
            return loss_sum, tokens, {}
        logits = self.model(**model_inputs(batch)).logits
        loss_sum, tokens = token_nll_sum(logits, batch["labels"])
        return loss_sum, tokens, {}
