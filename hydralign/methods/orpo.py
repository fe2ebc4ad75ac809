"""ORPO (Hong et al. 2024): one forward of chosen and rejected (``methods.dpo.pair_logps``: padded, packed or with
the chunked head), no reference. Per pair: the chosen answer's NLL averaged over its tokens, plus the odds-ratio loss
(``hydralign.losses.orpo``) on the length-averaged log-probs; summed over the micro-batch's pairs, so the base divides
once by the step's pairs.

The NLL term is per pair, as in the paper's expectation over pairs (eq. 6); TRL's ORPOTrainer takes it as one token
mean over the batch's chosen answers, which weights longer answers more. Per pair keeps the loss independent of how
a step is split across devices and accumulation (DESIGN.md section 5). Metrics follow TRL's names: rewards are beta x
the length-averaged log-probs; logps are length-averaged."""

from __future__ import annotations

import torch

from hydralign.losses.orpo import log_odds, orpo_loss, orpo_rewards
from hydralign.methods.base import PostTrainingModule
from hydralign.methods.dpo import pair_logps


class ORPOModule(PostTrainingModule):
    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        real = batch["real"]
        n = real.shape[0]
        logps, lengths = pair_logps(self.model, batch, self.cfg.model.get("loss_chunk_size"))
        avg = logps / lengths.clamp(min=1).to(logps.dtype)
        # log(1 - p) needs p < 1: a filler row (no target, real False) is set to -1, and a certain answer capped
        avg = torch.where(real.repeat(2), avg, torch.full_like(avg, -1.0)).clamp(max=-1e-7)
        chosen, rejected = avg[:n], avg[n:]
        beta = float(self.cfg.method.beta)
        or_losses, log_odds_ratio = orpo_loss(chosen, rejected, beta=beta)
        nll = -chosen
        w = real.to(logps.dtype)
        with torch.no_grad():
            r_chosen, r_rejected = orpo_rewards(chosen, rejected, beta=beta)
            metrics = {
                "rewards/chosen": (r_chosen * w).sum(), "rewards/rejected": (r_rejected * w).sum(),
                "rewards/accuracies": ((r_chosen > r_rejected).to(w.dtype) * w).sum(),
                "rewards/margins": ((r_chosen - r_rejected) * w).sum(),
                "log_odds_ratio": (log_odds_ratio * w).sum(),
                "log_odds_chosen": (log_odds(chosen, rejected).detach() * w).sum(),
                "nll_loss": (nll.detach() * w).sum(),
                "logps/chosen": (chosen.detach() * w).sum(), "logps/rejected": (rejected.detach() * w).sum(),
            }
        return ((nll + or_losses) * w).sum(), w.sum(), metrics
