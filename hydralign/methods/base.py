"""The shared LightningModule: optimizer and schedule wiring, loss normalization over the whole
accumulated all-device batch, per-step accumulation and logging of any metric dict without device
syncs, validation (loss, the method's metrics, generation).

A method subclass implements only ``batch_loss(batch) -> (loss_sum, unit_count, metric_sums)``: sums
over the micro-batch's units (tokens, pairs), never means. The base divides every sum once by the
window's unit count (``batch["window_units"]``), so a step's metrics are means over the whole
optimizer step on all devices, whatever the split into micro-batches.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from hydralign.data.tokenize import GenerationExample
from hydralign.distributed.strategies import loss_multiplier
from hydralign.evaluation import exact_match, exact_match_flex, is_repetitive
from hydralign.optim.optimizers import build_optimizer
from hydralign.optim.schedules import lr_factor
from hydralign.plan.core import Plan


class PostTrainingModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, plan: Plan, cfg: Any,
                 generation_examples: list[GenerationExample], stop_token_ids: list[int]):
        super().__init__()
        self.model, self.tokenizer, self.plan, self.cfg = model, tokenizer, plan, cfg
        self.generation_examples = generation_examples
        self.stop_token_ids = stop_token_ids
        self._window: torch.Tensor | None = None  # [loss, *metrics] shares of the current window
        self._val_sums: torch.Tensor | None = None  # [loss_sum, units, *metric_sums] of a validation
        self._metric_names: list[str] = []
        self.last_val_step = -1  # global step of the latest validation
        self.last_window_loss = torch.zeros(())  # mean loss of the last optimizer step (this rank's part)
        # Frozen models the method holds (DPO's reference): a plain dict, not submodules, so they stay out
        # of state_dict, the optimizer and Lightning's device/precision moves; sharded like the policy.
        self._frozen: dict[str, torch.nn.Module] = {}
        self._sharded = False
        self._loss_multiplier = loss_multiplier(plan)  # undoes Lightning's and the strategy's divisions

    @classmethod
    def check_before_models(cls, cfg: Any, tokenizer: Any) -> None:
        """Checks that need the tokenizer but no model (distillation: the teacher's tokenizer is the
        student's). ``hydralign.run.build`` runs them before any data or model loads. None by default."""

    @classmethod
    def check_data(cls, cfg: Any, data: Any) -> None:
        """Checks that need the loaded data but no model (GRPO: every routed source occurs in it).
        ``hydralign.run.build`` runs them right after the data loads. None by default."""

    @classmethod
    def frozen_models(cls, cfg: Any, policy: torch.nn.Module) -> dict[str, Any]:
        """Frozen models this method needs (keyword arguments of its constructor), built from the
        initial policy; kept out of the checkpoint and the optimizer. None by default."""
        return {}

    @staticmethod
    def initial_policy_reference(policy: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """``{"reference": a frozen copy of the initial policy}`` (DPO, GRPO with a KL term), or nothing under
        PEFT: there the adapter-disabled policy is the reference (``models.peft.adapters_disabled``), no copy."""
        from hydralign.models.peft import is_peft

        if is_peft(policy):
            return {}
        reference = copy.deepcopy(policy).eval()
        reference.requires_grad_(False)
        return {"reference": reference}

    def _frozen_to_device(self) -> None:
        """Frozen models follow the policy to its device; the reference, a copy of the policy, to its dtype too
        (a teacher keeps its own). FSDP2 shards already live on their device (``configure_model``)."""
        if self._sharded:
            return
        dtype = next(self.model.parameters()).dtype
        for name, frozen in self._frozen.items():
            frozen.to(device=self.device, dtype=dtype if name == "reference" else None)

    def on_fit_start(self) -> None:
        self._frozen_to_device()

    def on_validation_start(self) -> None:
        self._frozen_to_device()

    def configure_model(self) -> None:
        """hardware.strategy=fsdp: shard the policy (and every frozen model, with no optimizer state) with
        FSDP2 and fill the shards with rank 0's weights (``hydralign.distributed.fsdp.shard_from_rank0``). Lightning
        calls this before every fit and validate; the model is sharded once. Other strategies: nothing."""
        if self.plan.strategy != "fsdp" or self._sharded:
            return
        from hydralign.distributed.fsdp import shard_from_rank0

        strategy = self.trainer.strategy
        mesh, device = strategy.device_mesh["data_parallel"], strategy.root_device
        hw = self.cfg.hardware
        self.model = shard_from_rank0(self.model, mesh, device, self.plan.precision,
                                      reshard_after_forward=hw.fsdp_reshard_after_forward)
        for name, frozen in list(self._frozen.items()):  # forward only: nothing to keep for a backward
            self._frozen[name] = shard_from_rank0(frozen, mesh, device, self.plan.precision)
        self._sharded = True

    # --- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What a resume checks before anything is built (``hydralign.checkpoints.resume.check_resumable``)."""
        from hydralign.checkpoints.resume import compat_signature

        checkpoint["hydralign"] = {"compat": compat_signature(self.cfg), "world_size": self.plan.world_size,
                                   "grad_accum": self.plan.grad_accum, "micro_batch": self.plan.micro_batch,
                                   "strategy": self.plan.strategy}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Another world size (another accumulation for the same effective batch) or a longer run: the
        loop counters are re-derived from the optimizer steps done."""
        from hydralign.checkpoints.resume import rederive_loop_progress

        rederive_loop_progress(checkpoint, self.plan.grad_accum, self.plan.total_steps)

    # --- the one method-specific piece -------------------------------------------------------
    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of per-unit losses, number of units, {metric name: sum over units}) for a micro-batch."""
        raise NotImplementedError

    def finalize_metrics(self, means: dict[str, Any]) -> dict[str, Any]:
        """The step's (or validation's) metrics, each its sum over the units divided by their count, reduced over
        ranks: a method whose metric has another denominator returns that count as a metric too and divides here
        (the units cancel: exact over the whole step). Default: as they are."""
        return means

    def _stack(self, loss: torch.Tensor, metric_sums: dict[str, torch.Tensor]) -> torch.Tensor:
        names = list(metric_sums)
        if not self._metric_names:
            self._metric_names = names
        elif names != self._metric_names:
            raise RuntimeError(f"batch_loss returned metrics {names}, earlier {self._metric_names}")
        return torch.stack([loss.detach().double()] + [v.detach().double() for v in metric_sums.values()])

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._sharded and self.cfg.hardware.fsdp_accumulate_unsharded:  # reduce-scatter once per step
            last = bool(batch["window_last"])
            self.model.set_requires_gradient_sync(last)
            if not self.cfg.hardware.fsdp_reshard_after_forward:  # and all-gather once: weights stay gathered
                self.model.set_reshard_after_backward(last)      # over the step's micro-batches
        loss_sum, _, metric_sums = self.batch_loss(batch)
        units = batch["window_units"]
        share = loss_sum / units  # this micro-batch's part of the window mean
        shares = self._stack(loss_sum, metric_sums) / units
        self._window = shares if self._window is None else self._window + shares
        if batch["window_last"]:
            done = self.global_step + 1  # optimizer steps completed once this one is applied
            if done % self.trainer.log_every_n_steps == 0:  # only when Lightning writes the logs
                totals = self._window
                if self.plan.world_size > 1:  # one collective for every metric of the step
                    totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
                values = dict(zip(["train/loss"] + self._metric_names, totals.float()))
                values = self.finalize_metrics(values)
                self.log("train/loss", values.pop("train/loss"), on_step=True, on_epoch=False, prog_bar=True)
                self.log_dict({**values, "train/epoch": float(batch["epoch"]),
                               "train/lr": self.lr_schedulers().get_last_lr()[0],
                               "step": float(done)},  # Lightning uses "step" as the x-axis
                              on_step=True, on_epoch=False)
            self.last_window_loss = self._window[0].float()
            self._window = None
        # Lightning divides every micro-batch loss by grad_accum and DDP/FSDP/ZeRO average gradients
        # over the world: undo both, so the step's gradient is d(window sum / window units).
        return share * self._loss_multiplier

    def configure_optimizers(self):
        ocfg, scfg, plan = self.cfg.optimizer, self.cfg.schedule, self.plan
        decay, no_decay = [], []
        for _, p in self.model.named_parameters():
            if p.requires_grad:  # a ZeRO-3 partitioned parameter is an empty tensor: its shape is ds_shape
                (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": ocfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        opt = build_optimizer(groups, ocfg, plan.lr)  # optimizer.name: adamw | adamw_fused | sgd | adafactor
        total, warmup = plan.total_steps, plan.warmup_steps or 0

        def factor(step: int) -> float:
            return lr_factor(step, scfg.name, total, warmup, scfg.min_lr_ratio, list(scfg.milestones),
                             list(scfg.factors))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss_sum, count, metric_sums = self.batch_loss(batch)
        sums = self._stack(loss_sum, metric_sums)
        sums = torch.cat([sums[:1], count.detach().double().reshape(1), sums[1:]])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        gen = self.generation_counts()
        sums = self._val_sums if self._val_sums is not None else torch.zeros(2 + len(self._metric_names),
                                                                              dtype=torch.float64, device=self.device)
        totals = torch.cat([sums, gen.to(sums)])
        if self.plan.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        values = totals.tolist()
        loss_sum, units, n, em, flex, rep = values[0], values[1], *values[-4:]
        metrics = {"val/loss": loss_sum / max(units, 1.0)}
        means = self.finalize_metrics(dict(zip(self._metric_names, (v / max(units, 1.0) for v in values[2:-4]))))
        metrics.update({f"val/{k}": v for k, v in means.items()})
        if n:
            metrics.update({"val/exact_match": em / n, "val/exact_match_flex": flex / n,
                            "val/repetition_rate": rep / n})
        self.log_dict({**metrics, "step": float(self.global_step)}, on_step=False, on_epoch=True)
        self.last_val_step = self.global_step
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"[step {self.global_step}] {shown}", flush=True)

    @torch.no_grad()
    def generation_counts(self) -> torch.Tensor:
        """[n, exact, flex, repetitive] over this rank's share of the generation prompts."""
        ecfg, world = self.cfg.eval, self.plan.world_size
        every = self.generation_examples
        mine = [(e, True) for e in every[self.global_rank::world]]
        if every:  # equal-length shares: with sharded weights every rank must join every generate call
            mine += [(every[0], False)] * (-(-len(every) // world) - len(mine))
        counts = torch.zeros(4, dtype=torch.float64)
        was_training = self.model.training
        self.model.eval()
        for i in range(0, len(mine), ecfg.batch_size):
            chunk = mine[i:i + ecfg.batch_size]
            for (ex, real), (tokens, stopped) in zip(chunk, self.generate([e.prompt_ids for e, _ in chunk])):
                if not real:
                    continue
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                counts += torch.tensor([1.0, exact_match(text, ex.reference),
                                        exact_match_flex(text, ex.reference),
                                        is_repetitive(tokens, stopped, ecfg.repetition_min_repeats,
                                                      ecfg.repetition_max_period)], dtype=torch.float64)
        self.model.train(was_training)
        return counts

    def generate(self, prompts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """Greedy decoding (``hydralign.generation.greedy``). Returns (tokens before the stop token, stopped)."""
        from hydralign.generation import greedy

        return greedy(self.model, prompts, self.tokenizer.pad_token_id, self.stop_token_ids,
                      self.cfg.eval.max_new_tokens, self.device, synced=self.sharded_generation())

    def sharded_generation(self) -> bool:
        """Whether the weights are sharded over ranks, so every rank must join every generation forward."""
        return self.plan.strategy in ("fsdp", "deepspeed") and self.plan.world_size > 1
