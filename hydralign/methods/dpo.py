"""DPO and its family: one concatenated forward of chosen and rejected, the reference's log-probs from
a frozen copy, the adapter-disabled policy (PEFT), or a precomputed cache; the loss from
``hydralign.losses.preference``. Metrics are sums over pairs; the base divides them by the step's pairs."""

from __future__ import annotations

from typing import Any, Optional

import torch

from hydralign.losses.chunked_ce import chunked_sequence_logps, decoder_hidden
from hydralign.losses.preference import preference_loss
from hydralign.losses.token_ce import segment_logps, sequence_logps
from hydralign.methods.base import PostTrainingModule
from hydralign.methods.specs.dpo import needs_reference as dpo_needs_reference
from hydralign.models.inputs import model_inputs
from hydralign.models.peft import adapters_disabled


def pair_logps(model: torch.nn.Module, batch: dict,
               chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and lengths of the batch's 2B sequences (chosen first), one forward: padded rows, or
    packed rows whose ``segments`` say which sequence each token is in. ``chunk`` (``model.loss_chunk_size``):
    the head and log-softmax over that many loss positions at a time."""
    segments = batch.get("segments")
    num = 2 * batch["real"].shape[0] if segments is not None else None
    if chunk:
        hidden, head = decoder_hidden(model, batch)
        return chunked_sequence_logps(hidden, head.weight, batch["labels"], int(chunk), head.bias, segments, num)
    logits = model(**model_inputs(batch)).logits
    if segments is not None:
        return segment_logps(logits, batch["labels"], segments, num)
    return sequence_logps(logits, batch["labels"])


class DPOModule(PostTrainingModule):
    def __init__(self, *args: Any, reference: Optional[torch.nn.Module] = None,
                 reference_logps: Optional[dict[str, torch.Tensor]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        m = self.cfg.method
        self.loss_types = [m.loss_type] if isinstance(m.loss_type, str) else [str(t) for t in m.loss_type]
        self.loss_weights = list(m.loss_weights) if m.loss_weights is not None else None
        self.needs_reference = dpo_needs_reference(self.cfg)
        # The base's plain dict, not a submodule: the reference stays out of state_dict, the optimizer and
        # Lightning's device/precision moves (done in _frozen_to_device; under FSDP2 it is sharded).
        self._frozen = {"reference": reference} if reference is not None else {}
        self.reference_logps = reference_logps  # {"train": [N, 2], "val": [M, 2]} (chosen, rejected)

    @classmethod
    def frozen_models(cls, cfg: Any, policy: torch.nn.Module) -> dict[str, Any]:
        """The live reference, when the loss needs one and nothing cheaper serves: a frozen copy of
        the initial policy (never with PEFT: the adapter-disabled policy is the reference)."""
        if not dpo_needs_reference(cfg) or cfg.method.precompute_ref:
            return {}
        return cls.initial_policy_reference(policy)

    def _frozen_to_device(self) -> None:
        super()._frozen_to_device()
        if self.reference_logps is not None:
            self.reference_logps = {k: v.to(self.device) for k, v in self.reference_logps.items()}

    @torch.no_grad()
    def _reference(self, batch: dict, n: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if not self.needs_reference:
            return None, None
        if self.reference_logps is not None:
            table = self.reference_logps[batch["split"]][batch["index"].to(self.device)]  # [B, 2]
            return table[:, 0], table[:, 1]
        if "reference" in self._frozen:
            logps, _ = pair_logps(self._frozen["reference"], batch, self.cfg.model.get("loss_chunk_size"))
        else:
            with adapters_disabled(self.model):
                logps, _ = pair_logps(self.model, batch, self.cfg.model.get("loss_chunk_size"))
        return logps[:n], logps[n:]

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        real = batch["real"]
        n = real.shape[0]
        # The reference first: its forward then never coexists with the policy's saved activations.
        ref_chosen, ref_rejected = self._reference(batch, n)
        logps, lengths = pair_logps(self.model, batch, self.cfg.model.get("loss_chunk_size"))
        lengths = lengths.clamp(min=1).to(logps.dtype)
        m = self.cfg.method
        losses, r_chosen, r_rejected = preference_loss(
            logps[:n], logps[n:], ref_chosen, ref_rejected, loss_type=self.loss_types, beta=m.beta,
            label_smoothing=m.label_smoothing, gamma_beta_ratio=m.gamma_beta_ratio,
            chosen_lengths=lengths[:n], rejected_lengths=lengths[n:], loss_weights=self.loss_weights)
        w = real.to(losses.dtype)
        with torch.no_grad():
            metrics = {
                "rewards/chosen": (r_chosen * w).sum(), "rewards/rejected": (r_rejected * w).sum(),
                "rewards/accuracies": ((r_chosen > r_rejected).to(w.dtype) * w).sum(),
                "rewards/margins": ((r_chosen - r_rejected) * w).sum(),
                "logps/chosen": (logps[:n].detach() * w).sum(), "logps/rejected": (logps[n:].detach() * w).sum(),
            }
        return (losses * w).sum(), w.sum(), metrics
