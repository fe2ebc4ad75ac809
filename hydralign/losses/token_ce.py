"""Summed next-token cross-entropy: the SFT objective before normalization.

Returns a *sum* and a *count*, never a mean: the caller divides once by the token count of the
whole accumulated, all-device batch (DESIGN.md section 5), which is what makes the gradient
independent of how the batch is split (cf. transformers #34191, Lightning #20350).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hydralign.data.tokenize import IGNORE  # the label that marks "no loss here", set by tokenization


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, T, V] (position t predicts token t+1); labels: [B, T] with IGNORE where no loss.

    Returns (sum of -log p(label) over target positions, number of target positions), both scalars.
    Cross-entropy runs in fp32 whatever the logits' dtype.
    """
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()  # [B*(T-1), V]
    shift_labels = labels[:, 1:].reshape(-1)  # [B*(T-1)]
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    return total, (shift_labels != IGNORE).sum()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (sum of log p(label) over its target positions [B], number of targets [B]).

    logits: [B, T, V]; labels: [B, T] with IGNORE where no target. The log-softmax runs in fp32;
    positions without a target contribute exactly 0 (a row with none gives logp 0, length 0).
    """
    shift_labels = labels[:, 1:]  # [B, T-1]
    mask = shift_labels != IGNORE
    # Rows of contiguous [B*(T-1), V]: a transposed [B, V, T-1] input is ~3x slower on CPU (benchmarks/).
    nll = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view_as(shift_labels)  # 0 where ignored
    return -nll.sum(dim=1), mask.sum(dim=1)


def segment_logps(logits: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor,
                  num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logps`` for packed rows: ``segments`` [B, T] numbers the sequence of every token (-1 for
    padding; ``hydralign.data.packing``), and the result is per sequence: ([num] log-probs, [num] target
    counts). A target belongs to the sequence of its own position (each sequence's first label is ignored)."""
    shift_labels = labels[:, 1:].reshape(-1)
    nll = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.size(-1)), shift_labels,
                          ignore_index=IGNORE, reduction="none")  # 0 where ignored
    seg = segments[:, 1:].reshape(-1)
    seg = torch.where(seg >= 0, seg, torch.full_like(seg, num))  # padding into a bin that is dropped
    logps = torch.zeros(num + 1, dtype=nll.dtype, device=nll.device).index_add(0, seg, -nll)
    lengths = torch.zeros(num + 1, dtype=torch.long, device=nll.device).index_add(
        0, seg, (shift_labels != IGNORE).long())
    return logps[:num], lengths[:num]
