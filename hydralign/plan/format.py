"""The plan as ``dry_run=true`` prints it (and every run logs): one row per derived size, then the rollout and
memory rows."""

from __future__ import annotations

from typing import Any

from hydralign.plan.core import Plan
from hydralign.plan.memory import format_memory
from hydralign.plan.mixture import format_mixture
from hydralign.plan.packing import PACKING_TEXT
from hydralign.plan.rollout import format_rollout


def format_plan(plan: Plan, title: str = "plan") -> str:
    def show(v: Any) -> str:
        if v is None:
            return "known once the data is loaded"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("method / model", f"{plan.method} / {plan.model}"
                           + (f" ({plan.num_parameters:.3g} parameters)" if plan.num_parameters else "")),
        ("hardware", f"{plan.nodes} node(s) x {plan.devices_per_node} {plan.accelerator} device(s), "
                     f"strategy {plan.strategy}, precision {plan.precision}"),
        ("world_size", plan.world_size),
        ("micro_batch (per device)", plan.micro_batch),
        ("grad_accum (derived)", plan.grad_accum),
        ("effective_batch", f"{plan.effective_batch} = {plan.world_size} x {plan.micro_batch} x {plan.grad_accum}"),
        ("tokens per step (max)", tokens_per_step(plan)),
        ("packing", PACKING_TEXT[plan.packing].format(n=plan.max_tokens_per_micro)),
        ("loss normalized by", f"{plan.loss_unit} of the whole step (data: {plan.data_kind})"),
        ("frozen models", "; ".join(plan.frozen_models) or "none"),
        *format_mixture(plan.mixture),
        ("train rows (packed)" if plan.packing == "packed" else "train examples", show(plan.num_train_examples)),
        ("steps per epoch", show(plan.steps_per_epoch)),
        ("total steps", show(plan.total_steps)),
        ("epochs", show(plan.epochs)),
        ("warmup steps", show(plan.warmup_steps)),
        ("lr / schedule", f"{plan.lr:g} / {plan.schedule}"),
        ("validate every", f"{plan.eval_every_n_steps} steps"),
        ("seed", plan.seed),
    ] + harness_rows(plan) + format_rollout(plan.rollout) + format_memory(plan.memory)
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"== {title} =="] + [f"  {k.ljust(width)}  {show(v)}" for k, v in rows])


def tokens_per_step(plan: Plan) -> str:
    if plan.packing == "packed":
        return f"{plan.max_tokens_per_step} = {plan.effective_batch} rows x {plan.max_tokens_per_micro}"
    per_example = plan.max_tokens_per_step // max(1, plan.effective_batch * plan.max_seq_len)
    return f"{plan.max_tokens_per_step} = {plan.effective_batch} x {per_example} sequence(s) x {plan.max_seq_len}"


def harness_rows(plan: Plan) -> list[tuple[str, Any]]:
    """lm-eval during training, when asked (``eval.harness.every``)."""
    if plan.harness_every == "none":
        return []
    when = "at the end of training" if plan.harness_every == "end" else f"after each {plan.harness_every}"
    return [("lm-eval tasks", f"{', '.join(plan.harness_tasks)} {when}")]
