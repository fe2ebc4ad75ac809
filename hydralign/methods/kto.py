"""KTO (Ethayarajh et al. 2024) on the shared base. Each example is a completion labelled desirable or not; its loss
is measured against the reference (a frozen copy, the adapter-disabled policy, or precomputed log-probs) relative to
a KL estimate (``hydralign.losses.kto``), summed over the micro-batch's completions, so the base divides once by the
step's completions.

The KL estimate is taken over the whole optimizer step: the step's first micro-batch carries the KL twins of every
example this rank trains on in the step (``data.kinds.unpaired``), their policy and reference log-ratios are summed
without gradient, summed over ranks, and divided by their count, once; every micro-batch of the step uses that value.
The twins are fixed per example and the step's examples do not depend on how it is split, so neither does the
estimate, nor the loss (proven in tests/integration/test_kto.py). TRL estimates it per micro-batch and averages
over processes, which changes with the split. In validation each batch's own twins give its estimate.

Metrics as TRL names them: ``rewards/chosen`` and ``logps/chosen`` are means over the desirable completions,
``rewards/rejected`` and ``logps/rejected`` over the undesirable ones (summed log-probs), ``rewards/margins`` their
difference, ``kl`` the estimate."""

from __future__ import annotations

from typing import Any, Optional

import torch

from hydralign.losses.kto import kl_estimate_from_sums, kto_loss
from hydralign.losses.token_ce import sequence_logps
from hydralign.methods.base import PostTrainingModule
from hydralign.models.inputs import model_inputs
from hydralign.models.peft import adapters_disabled

ROWS = ("input_ids", "labels", "attention_mask")


def _rows(batch: dict, part: slice) -> dict:
    return {k: batch[k][part] for k in ROWS}


class KTOModule(PostTrainingModule):
    def __init__(self, *args: Any, reference: Optional[torch.nn.Module] = None,
                 reference_logps: Optional[dict[str, torch.Tensor]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._frozen = {"reference": reference} if reference is not None else {}
        self.reference_logps = reference_logps  # {"train": [N, 2], "val": [M, 2]} (completion, KL twin)
        self._kl: Optional[torch.Tensor] = None  # this optimizer step's estimate

    @classmethod
    def frozen_models(cls, cfg: Any, policy: torch.nn.Module) -> dict[str, Any]:
        """A frozen copy of the initial policy, unless the log-probs are precomputed or PEFT's adapter-disabled
        policy is the reference."""
        return {} if cfg.method.precompute_ref else cls.initial_policy_reference(policy)

    def _frozen_to_device(self) -> None:
        super()._frozen_to_device()
        if self.reference_logps is not None:
            self.reference_logps = {k: v.to(self.device) for k, v in self.reference_logps.items()}

    def _logps(self, model: torch.nn.Module, rows: dict) -> torch.Tensor:
        return sequence_logps(model(**model_inputs(rows)).logits, rows["labels"])[0]

    @torch.no_grad()
    def _reference(self, rows: dict, index: torch.Tensor, column: int, split: str) -> torch.Tensor:
        if self.reference_logps is not None:
            return self.reference_logps[split][index.to(self.device), column]
        if "reference" in self._frozen:
            return self._logps(self._frozen["reference"], rows)
        with adapters_disabled(self.model):
            return self._logps(self.model, rows)

    @torch.no_grad()
    def _kl_estimate(self, twins: dict, index: torch.Tensor, split: str, over_ranks: bool) -> torch.Tensor:
        """max(0, mean over the twins of (policy - reference) summed log-probs), detached. ``over_ranks`` (training):
        micro-batch-sized forwards over the rank's share of the step (every rank holds an equal share, so every rank
        runs the same forwards, as sharded weights need), the sum and count all-reduced first; otherwise (validation:
        ranks may hold batches of different sizes) one forward for the batch's twins."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        size = twins["input_ids"].shape[0]
        step = self.plan.micro_batch if over_ranks else max(size, 1)
        for start in range(0, size, step):
            part = slice(start, start + step)
            rows = _rows(twins, part)
            total += (self._logps(self.model, rows) - self._reference(rows, index[part], 1, split)).double().sum()
        sums = torch.stack([total, torch.tensor(float(size), dtype=torch.float64, device=self.device)])
        if over_ranks and self.plan.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        return kl_estimate_from_sums(sums[0], sums[1]).float()

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        real, split = batch["real"], batch["split"]
        n = real.shape[0]
        if "kl_window" in batch:  # the step's first micro-batch: the estimate for the whole step
            self._kl = self._kl_estimate(batch["kl_window"], batch["kl_window_index"], split, over_ranks=True)
        kl = self._kl if split == "train" else self._kl_estimate(_rows(batch, slice(n, None)), batch["index"], split,
                                                                 over_ranks=False)
        rows, m = _rows(batch, slice(0, n)), self.cfg.method
        reference = self._reference(rows, batch["index"], 0, split)  # first: never beside the policy's activations
        policy = self._logps(self.model, rows)
        desirable = batch["desirable"]
        losses, rewards = kto_loss(policy, reference.to(policy.dtype), desirable, kl.to(policy.dtype),
                                   beta=float(m.beta), desirable_weight=float(m.desirable_weight),
                                   undesirable_weight=float(m.undesirable_weight))
        w = real.to(losses.dtype)
        good, bad = (desirable & real).to(w.dtype), (~desirable & real).to(w.dtype)
        with torch.no_grad():
            metrics = {"rewards/chosen": (rewards * good).sum(), "rewards/rejected": (rewards * bad).sum(),
                       "logps/chosen": (policy.detach() * good).sum(), "logps/rejected": (policy.detach() * bad).sum(),
                       "kl": kl.to(w.dtype) * w.sum(), "count/chosen": good.sum(), "count/rejected": bad.sum()}
        return (losses * w).sum(), w.sum(), metrics

    def finalize_metrics(self, means: dict[str, Any]) -> dict[str, Any]:
        """Per-class means (each sum over its class's count: the units cancel), their margin; counts dropped."""
        out = {k: v for k, v in means.items() if not k.startswith(("count/", "rewards/", "logps/"))}
        n_good, n_bad = means.get("count/chosen"), means.get("count/rejected")
        for side, count in (("chosen", n_good), ("rejected", n_bad)):
            if count is not None and float(count) > 0:
                out[f"rewards/{side}"] = means[f"rewards/{side}"] / count
                out[f"logps/{side}"] = means[f"logps/{side}"] / count
        if "rewards/chosen" in out and "rewards/rejected" in out:
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out
