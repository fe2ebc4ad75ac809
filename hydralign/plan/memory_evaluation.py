"""What lm-eval holds on rank 0 while it evaluates during training (``eval.harness.every`` not ``none``), added to
the plan's memory estimate (``hydralign.plan.memory``). Pure: no torch.

An evaluation runs between optimizer steps (hydralign/harness/callback.py): the step's activations and logits are
freed, the training state is not. Rank 0's peak during it, in GiB:

  resident     parameters, gradients (not freed until the next step's zero_grad), optimizer states and frozen
               models, as the training estimate counts them.
               No whole copy: sharded weights (FSDP2, ZeRO-3) stay sharded, every rank running the same requests,
               each forward gathering the layers as training's does (counted in parameters already).
  forward      one of lm-eval's batches (``eval.harness.batch_size``, null: ``eval.batch_size``) of S tokens, S =
               ``data.max_seq_len`` (lm-eval's requests as long as the training rows; longer few-shot prompts hold
               more), without gradients, in the weights' dtype r: the KV cache (2 x layers x kv x r per token), one
               decoder layer's working tensors ((3h + 2I) x r per token) and a log-likelihood request's logits and
               their log-softmax (lm-eval's, in the logits' dtype: vocab x 2r per token; generation keeps only the
               last position's logits).

The estimate's total is the larger of the training step's peak and this one; its verdict and suggestions use it.
"""

from __future__ import annotations

import dataclasses

from hydralign.plan.memory import GIB, MemoryEstimate, MemoryInputs, estimate_pieces


def evaluation_peak(m: MemoryInputs, est: MemoryEstimate) -> tuple[float, tuple[str, ...]]:
    """Rank 0's bytes while lm-eval evaluates a batch of ``m.eval_batch`` rows beside the training state of
    ``est``, and the notes that go with them."""
    resident = (est.parameters_gib + est.gradients_gib + est.optimizer_gib + est.frozen_gib) * GIB
    arch = m.arch
    if arch is None:
        return resident, ("evaluating: lm-eval's forward unknown (the card gives no architecture); counted: the "
                          "training state",)
    tokens, r = int(m.eval_batch or 1) * m.seq_len, m.weight_bytes
    forward = tokens * (2 * arch.layers * arch.kv * r + (3 * arch.hidden + 2 * arch.intermediate) * r
                        + arch.vocab * 2 * r)
    return resident + forward, ()


def estimate_with_evaluation(m: MemoryInputs) -> MemoryEstimate:
    """``estimate_pieces`` plus rank 0's evaluation peak (``evaluation_gib``) when lm-eval runs during training;
    the total is the larger of the step's and the evaluation's. For ``plan.memory.estimate_memory(m, pieces=...)``,
    so each suggested override (``eval.harness.batch_size=1`` among them) is judged by this total too."""
    est = estimate_pieces(m)
    if m.eval_batch is None:
        return est
    peak, notes = evaluation_peak(m, est)
    total = max(est.total_gib, peak / GIB)
    fits = None if est.device_gib is None else total <= est.device_gib
    return dataclasses.replace(est, evaluation_gib=peak / GIB, total_gib=total, fits=fits, notes=est.notes + notes)
