"""Chunked cross-entropy (``model.loss_chunk_size``): the LM head and the loss computed over chunks of the
loss positions only, so the ``[tokens, vocab]`` logits are never held at once.

The model's decoder gives hidden states ``[B, T, H]`` (``decoder_hidden``); the positions whose next token is a
target (label != IGNORE after the shift) are gathered, and ``LinearNLL`` computes ``-log softmax(h W^T + b)[y]``
for ``chunk_size`` of them at a time. Its forward keeps only the per-position log-sum-exp (``[N]`` floats); its
backward recomputes one chunk's logits at a time and accumulates the gradients of the hidden states and of the
head weight (one extra head matmul per chunk, the price of never storing logits, as in torchtune's chunked
loss with activation checkpointing; Liger's fused kernel instead computes the gradients during the forward).
Log-softmax runs in fp32 whatever the compute dtype, as in ``token_ce``. The result is per position, so SFT's
token sum (``chunked_token_nll_sum``) and DPO's per-sequence sums (``chunked_sequence_logps``) share it; both
return sums, never means (DESIGN.md section 5), exactly as their unchunked twins in ``token_ce``.

On CUDA, when Liger-Kernel is installed (not a dependency), SFT's sum uses its fused linear cross-entropy
(``LigerFusedLinearCrossEntropyLoss``, reduction sum) instead.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from hydralign.data.tokenize import IGNORE
from hydralign.models.inputs import model_inputs


class LinearNLL(torch.autograd.Function):
    """nll[i] = logsumexp(x[i] W^T + b) - (x[i] W^T + b)[y[i]] for rows x [N, H], weight W [V, H], bias b [V]
    or None, targets y [N] (all valid); computed ``chunk`` rows at a time in both directions. Returns fp32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        n = x.shape[0]
        nll = torch.empty(n, dtype=torch.float32, device=x.device)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                logits = _logits(x[rows], weight, bias)  # [c, V] fp32, the only logits alive
                lse[rows] = torch.logsumexp(logits, dim=-1)
                nll[rows] = lse[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
                del logits
        ctx.save_for_backward(x, weight, bias, targets, lse)
        ctx.chunk = chunk
        return nll

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        x, weight, bias, targets, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, chunk = x.shape[0], ctx.chunk
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        grad_nll = grad_nll.float()
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, n, chunk):
                rows = slice(start, min(n, start + chunk))
                # d nll / d logits = softmax - onehot, scaled by the upstream gradient of each row
                g = _logits(x[rows], weight, bias).sub_(lse[rows, None]).exp_()
                g.scatter_add_(1, targets[rows, None], torch.full_like(g[:, :1], -1.0))
                g.mul_(grad_nll[rows, None])
                if need_x:
                    grad_x[rows] = (g.to(weight.dtype) @ weight).to(x.dtype)
                if need_w:
                    grad_w.addmm_(g.t(), x[rows].float())
                if need_b:
                    grad_b += g.sum(0)
                del g
        return (grad_x, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def _logits(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = x @ weight.t()
    if bias is not None:
        out = out + bias
    return out.float()


def linear_nll(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row NLL [N] (fp32) of the head ``weight`` [V, H] (``bias`` [V]) over rows ``x`` [N, H]. Under autocast
    the head runs in the autocast dtype, as ``lm_head`` would."""
    if chunk < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk}")
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    elif x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return LinearNLL.apply(x, weight, bias, targets, int(chunk))


def _loss_rows(hidden: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(hidden rows [N, H] of the positions with a next-token target, their targets [N], and where they are:
    (batch rows [N], target positions - 1 [N]))."""
    shift_labels = labels[:, 1:]
    b_idx, t_idx = (shift_labels != IGNORE).nonzero(as_tuple=True)
    return hidden[b_idx, t_idx], shift_labels[b_idx, t_idx], (b_idx, t_idx)


def _liger_loss() -> Optional[Any]:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")


def fused_kernel_available(device: torch.device) -> bool:
    """Whether SFT's chunked loss will run Liger's fused kernel (CUDA and liger-kernel installed)."""
    return device.type == "cuda" and _liger_loss() is not None


def chunked_token_nll_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                          bias: Optional[torch.Tensor] = None, use_fused: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_ce.token_nll_sum`` from hidden states [B, T, H] and the head, without the [B*T, V] logits:
    (sum of -log p(label) over target positions, number of target positions)."""
    x, targets, _ = _loss_rows(hidden, labels)
    count = torch.tensor(targets.numel(), device=hidden.device)
    if targets.numel() == 0:  # no target in this micro-batch: a zero that still reaches the head's gradient
        return (hidden.sum() + weight.sum()) * 0.0, count
    if use_fused and hidden.is_cuda:
        liger = _liger_loss()
        if liger is not None:
            return liger(weight, x, targets, bias).float(), count
    return linear_nll(x, weight, targets, chunk, bias).sum(), count


def chunked_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                           bias: Optional[torch.Tensor] = None, segments: Optional[torch.Tensor] = None,
                           num: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_ce.sequence_logps`` from hidden states [B, T, H] and the head: per sequence (sum of log p(label)
    over its target positions [B], number of targets [B]). Packed rows: ``segments`` [B, T] numbers each
    token's sequence (``token_ce.segment_logps``), and ``num`` sequences are returned."""
    x, targets, (rows, cols) = _loss_rows(hidden, labels)
    nll = linear_nll(x, weight, targets, chunk, bias) if targets.numel() else x.sum(-1).float() * 0.0
    if segments is not None:
        rows = segments[:, 1:][rows, cols]
    size = labels.shape[0] if segments is None else int(num)
    logps = torch.zeros(size, dtype=torch.float32, device=hidden.device).index_add(0, rows, -nll)
    lengths = torch.zeros(size, dtype=torch.long, device=hidden.device).index_add(0, rows, torch.ones_like(rows))
    return logps, lengths


def decoder_hidden(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.nn.Module]:
    """The decoder's last hidden states [B, T, H] (after the final norm) and the LM head module, for a
    Hugging Face causal LM (``model.model`` for Llama-like models: its ``base_model_prefix``), also inside a PEFT
    wrapper. The head itself is not run.

    Under FSDP2 the model's own forward runs, with the head replaced by an identity for its duration: the root's
    hooks then gather its weights (embeddings, final norm, head), and FSDP2 keeps the root's weights gathered from
    its forward until its backward, so the head's whole weight is there for the chunked loss, and its gradient
    is reduce-scattered with the root's at the end of the backward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        raise RuntimeError(f"model.loss_chunk_size needs a causal LM with a separate decoder and head; "
                           f"{type(base).__name__} has none: set model.loss_chunk_size=null")
    if _fsdp_root(model):
        base.set_output_embeddings(torch.nn.Identity())
        try:
            hidden = model(**model_inputs(batch)).logits
        finally:
            base.set_output_embeddings(head)
        return hidden, head
    out = decoder(**model_inputs(batch))
    return out.last_hidden_state, head


def _fsdp_root(model: torch.nn.Module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
