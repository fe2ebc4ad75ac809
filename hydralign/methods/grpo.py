"""GRPO with verifiable rewards on the shared base: the first micro-batch of each rollout batch samples
this rank's prompts ``num_generations`` times with the policy (Hugging Face ``generate``, KV cache; or this
learner's own vLLM engine, ``rollout_workers.colocated``; or a generator process samples them),
scores them (``hydralign.rewards``), normalizes advantages per prompt group and keeps the rollout; every
micro-batch then trains on its slice (``hydralign.data.rollouts``). The loss is a sum over the step's
units (``hydralign.losses.grpo``: sequences, completion tokens, or sequences x max length), divided once
by the whole mini-batch's count, taken at rollout time over all ranks.

Metrics are returned as sums the base divides by the step's unit count; each is pre-scaled by
``units / count`` of its own denominator (samples or completion tokens), so what is logged is the
mean over the mini-batch's samples (rewards, accuracy, lengths) or tokens (kl, clip fraction).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from hydralign.errors import ConfigError
from hydralign.generation import completion_logps, finish_rollout, rollout_seed, sample_groups
from hydralign.losses.grpo import aggregate, group_advantages, importance_weights, per_token_loss, unit_count
from hydralign.losses.token_ce import sequence_logps
from hydralign.methods.base import PostTrainingModule
from hydralign.models.peft import adapters_disabled
from hydralign.rewards import max_reward, route, score, source_of, verifier_names


@dataclass
class Rollout:
    index: int
    ids: torch.Tensor  # [N, Wp + T] left-padded prompt then completion
    attention: torch.Tensor  # [N, Wp + T]
    positions: torch.Tensor  # [N, Wp + T]
    width: int  # Wp, the prompt part's width
    completion: torch.Tensor  # [N, T] completion tokens (through the stop token)
    loss_mask: torch.Tensor  # [N, T] completion tokens that carry loss (truncated rows cleared if asked)
    advantages: torch.Tensor  # [N]
    old_logps: Optional[torch.Tensor]  # [N, T] at sampling time (when the policy moves within the rollout)
    sampler_logps: Optional[torch.Tensor]  # [N, T] as another engine computed them: a generator process, or this
    # learner's vLLM (importance sampling)
    ref_logps: Optional[torch.Tensor]  # [N, T] (beta > 0)
    sample_metrics: dict[str, tuple[torch.Tensor, int]]  # name -> ([N] per-sample values, mini_units column
    # of the count it is a mean over: 1 samples; 3 + i the samples routed to verifier i)
    mini_units: torch.Tensor  # [minis, 3 + V]: loss units, samples, loss tokens, then the samples each
    # verifier scored, of each mini-batch, all ranks


class GRPOModule(PostTrainingModule):
    def __init__(self, *args: Any, reference: Optional[torch.nn.Module] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._frozen = {"reference": reference} if reference is not None else {}
        self._rollout: Optional[Rollout] = None
        self._step_started: Optional[float] = None
        self._generation_s = self._waiting_s = self._sync_s = self._load_s = 0.0
        self._client: Optional[Any] = None  # hardware.generator_devices >= 1: rollout_workers.client.RolloutClient
        self._colocated: Optional[Any] = None  # generation.backend=vllm in this learner: rollout_workers.colocated
        m, r = self.cfg.method, self.plan.rollout
        self.weights = {str(k): float(v) for k, v in dict(m.rewards).items()}
        self.by_source = {str(src): {str(k): float(v) for k, v in dict(table).items()}
                          for src, table in dict(m.get("rewards_by_source") or {}).items()}
        self.verifiers = verifier_names(self.weights, self.by_source)
        # Old log-probs are the sampling policy's: needed once the policy moves within a rollout batch.
        self.keep_old = r.steps_per_rollout > 1

    @classmethod
    def frozen_models(cls, cfg: Any, policy: torch.nn.Module) -> dict[str, Any]:
        """beta > 0: a frozen copy of the initial policy (under PEFT the adapter-disabled policy instead)."""
        if float(cfg.method.beta) == 0.0:
            return {}
        return cls.initial_policy_reference(policy)

    @classmethod
    def check_data(cls, cfg: Any, data: Any) -> None:
        """Every source in method.rewards_by_source must be some train prompt's source (a misspelled one
        would silently score its samples with method.rewards), checked before any model loads; the answer keys of
        the prompts routed to the ifeval verifier are read (rewards_ifeval.check_references)."""
        table = dict(cfg.method.get("rewards_by_source") or {})
        cls._check_ifeval_keys(cfg, data, table)
        if not table:
            return
        found = sorted({s for s in (source_of(e.reference) for e in data.train_examples) if s is not None})
        known = {s.lower() for s in found}  # sources match without case (rewards.route)
        for src in table:
            if str(src).lower() not in known:
                raise ConfigError(f"method.rewards_by_source.{src} matches no train prompt's source; the data's "
                                  f"sources (its records' 'dataset' field): {found or 'none'}")

    @staticmethod
    def _check_ifeval_keys(cfg: Any, data: Any, table: dict) -> None:
        from hydralign.rewards_ifeval import check_references

        refs = [e.reference for e in data.train_examples]
        tables = route([source_of(r) for r in refs], dict(cfg.method.rewards), table)
        routed = [r for r, t in zip(refs, tables) if "ifeval" in t]
        if routed:
            check_references(routed, "method.rewards_by_source" if table else "method.rewards")

    # --- rollout -------------------------------------------------------------------------------
    def _sample(self, prompts: list[list[int]], rollout_index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(prompt + completion ids [N, Wp + T], attention over the prompt part, Wp) for every prompt
        repeated num_generations times (adjacent). Seeded from (seed, rollout, rank): a resumed run
        samples the same rollout batch from the same weights."""
        m, r = self.cfg.method, self.plan.rollout
        return sample_groups(self.model, prompts, r.generations_per_prompt, self.tokenizer.pad_token_id,
                             self.stop_token_ids, r.max_completion_length, float(m.temperature),
                             rollout_seed(self.plan.seed, rollout_index, self.global_rank), self.device,
                             synced=self.plan.strategy in ("fsdp", "deepspeed") and self.plan.world_size > 1)

    def _sampled(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int, Optional[dict]]:
        """(ids, prompt attention, prompt width, the sampler's extras or None): sampled here (HF generate, or this
        learner's own vLLM engine, loaded with the policy first), or taken from the generator process that sampled
        this learner's prompts (its ids checked against this rank's prompts)."""
        if self._colocated is not None:  # every learner at once: under FSDP2 the load gathers the policy
            got = self._colocated.sample(self.model, self.global_step, batch["prompt_ids"],
                                         self.plan.rollout.generations_per_prompt,
                                         rollout_seed(self.plan.seed, batch["rollout"], self.global_rank))
            self._load_s = float(got["weight_sync_s"])
            return got["out"].to(self.device), got["prompt_mask"].to(self.device), int(got["width"]), got
        if self._client is None:
            return (*self._sample(batch["prompt_ids"], batch["rollout"]), None)
        got, self._waiting_s = self._client.take(batch["rollout"])
        out, mask, width = got["out"].to(self.device), got["prompt_mask"].to(self.device), int(got["width"])
        rows = [p for p in batch["prompt_ids"] for _ in range(self.plan.rollout.generations_per_prompt)]
        if len(out) != len(rows) or [row[width - len(p):].tolist() for row, p in zip(out[:, :width], rows)] != rows:
            raise RuntimeError(f"rollout batch {batch['rollout']}: the generator sampled other prompts than rank "
                               f"{self.global_rank}'s (the learners' and generators' schedules disagree)")
        return out, mask, width, got

    def _make_rollout(self, batch: dict) -> Rollout:
        m, r, plan = self.cfg.method, self.plan.rollout, self.plan
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        out, prompt_mask, width, remote = self._sampled(batch)
        done = finish_rollout(out, prompt_mask, width, self.stop_token_ids, self.tokenizer.pad_token_id)
        ids, attention, positions, completion = done["ids"], done["attention"], done["positions"], done["completion"]
        completion_mask, stopped, first = done["completion_mask"], done["stopped"], done["first"]
        n = completion.shape[0]
        loss_mask = completion_mask & stopped.unsqueeze(1) if m.mask_truncated_completions else completion_mask
        generated = time.perf_counter()

        texts = [self.tokenizer.decode(row[:int(k)].tolist(), skip_special_tokens=True)
                 for row, k in zip(completion, first)]
        refs = [ref for ref in batch["references"] for _ in range(r.generations_per_prompt)]
        sources = [src for src in batch.get("sources") or [None] * len(batch["references"])
                   for _ in range(r.generations_per_prompt)]
        totals, per, errors = score(texts, refs, self.weights, m.format_pattern, self.by_source, sources)
        best = [max_reward(table) for table in route(sources, self.weights, self.by_source)]
        rewards = torch.tensor(totals, dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards, r.generations_per_prompt, m.scale_rewards)
        if m.scale_rewards == "batch" and plan.world_size > 1:  # the std of the whole rollout batch, all ranks
            everyone = self.all_gather(rewards).reshape(-1)
            grouped = rewards.view(-1, r.generations_per_prompt)
            advantages = (grouped - grouped.mean(1, keepdim=True)).reshape(-1) / (everyone.std() + 1e-4)
            reward_std = everyone.std()
        else:
            reward_std = rewards.std() if plan.world_size == 1 else self.all_gather(rewards).reshape(-1).std()

        self.model.train(was_training)
        old_logps = ref_logps = None
        micro, temp = r.micro_batch_samples_per_device, float(m.temperature)
        with torch.no_grad():
            if self.keep_old:
                old_logps = torch.cat([completion_logps(self.model, ids[i:i + micro], attention[i:i + micro],
                                                        positions[i:i + micro], width, temp)
                                       for i in range(0, n, micro)])
            if float(m.beta) != 0.0:
                ref_logps = torch.cat([self._reference_logps(ids[i:i + micro], attention[i:i + micro],
                                                             positions[i:i + micro], width, temp)
                                       for i in range(0, n, micro)])

        local = r.mini_batch_samples_per_device
        scored = {name: [v is not None for v in per[name]] for name in self.verifiers}
        mini_units = torch.tensor([[unit_count(loss_mask[j:j + local], r.loss_type, r.max_completion_length),
                                    float(local), float(loss_mask[j:j + local].sum())]
                                   + [float(sum(scored[name][j:j + local])) for name in self.verifiers]
                                   for j in range(0, n, local)], dtype=torch.float64, device=self.device)
        if plan.world_size > 1:
            mini_units = self.trainer.strategy.reduce(mini_units, reduce_op="sum")
        lengths = completion_mask.sum(dim=1).float()
        f = lambda xs: torch.tensor(xs, dtype=torch.float32, device=self.device)  # noqa: E731
        metrics = {"rewards/mean": (rewards, 1), "rewards/std": (reward_std.expand(n), 1)}
        for i, name in enumerate(self.verifiers):  # each verifier's mean over the samples routed to it
            metrics[f"rewards/{name}/mean"] = (f([0.0 if v is None else v for v in per[name]]), 3 + i)
            metrics[f"rewards/{name}/errors"] = (f([float(errors[name])] * n), 1)  # samples it raised on, this rollout
        right = [b > 0 and t >= b - 1e-9 for t, b in zip(totals, best)]  # the sample's own table's best total
        metrics.update({
            "accuracy": (f([float(x) for x in right]), 1), "completion_length": (lengths, 1),
            "truncated_fraction": ((~stopped).float(), 1),
            "episodes": (torch.full((n,), float((batch["rollout"] + 1) * r.samples_per_rollout), device=self.device), 1),
        })
        self._generation_s = generated - started
        sampler_logps = None
        if remote is not None:  # another engine sampled: what it took there, and how old its weights were
            self._generation_s = float(remote["generation_s"])
            sampler_logps = remote["sampler_logps"].to(self.device)
            metrics["rollout/staleness"] = (torch.full((n,), float(remote["staleness"]), device=self.device), 1)
        return Rollout(batch["rollout"], ids, attention, positions, width, completion, loss_mask, advantages,
                       old_logps, sampler_logps, ref_logps, metrics, mini_units)

    @torch.no_grad()
    def _reference_logps(self, ids, attention, positions, width: int, temperature: float) -> torch.Tensor:
        if "reference" in self._frozen:
            return completion_logps(self._frozen["reference"], ids, attention, positions, width, temperature)
        with adapters_disabled(self.model):
            return completion_logps(self.model, ids, attention, positions, width, temperature)

    # --- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self._rollout is None or self._rollout.index != batch["rollout"]:
            self._rollout = self._make_rollout(batch)
        units = float(self._rollout.mini_units[batch["mini"], 0])
        return super().training_step({**batch, "window_units": max(units, 1.0)}, batch_idx)

    def on_train_start(self) -> None:
        """hardware.generator_devices >= 1: meet the generator processes (after any resume: the policy version is
        the optimizer steps restored) and give them the starting weights. generation.backend=vllm without them:
        every learner builds its own engine (rollout_workers.colocated), seeded seed + rank."""
        r = self.plan.rollout
        if not r.generator_devices and r.backend == "vllm":
            from hydralign.rollout_workers.colocated import ColocatedVLLM

            longest = max(len(e.prompt_ids) for e in self.trainer.datamodule.train_examples)
            sampling = (self.tokenizer.pad_token_id, list(self.stop_token_ids), float(self.cfg.method.temperature),
                        r.max_completion_length)
            self._colocated = ColocatedVLLM.start(self.model, self.cfg.generation, self.global_rank,
                                                  self.trainer.world_size, self.plan.seed + self.global_rank,
                                                  longest + r.max_completion_length, self.device, sampling)
        if not r.generator_devices:
            return
        from hydralign.rollout_workers.client import RolloutClient

        run_dir = self.cfg.get("run_dir")
        log = Path(run_dir) / "launch" / "weight_sync.jsonl" if run_dir and self.global_rank == 0 else None
        prompts = [e.prompt_ids for e in self.trainer.datamodule.train_examples]
        timeout = float(self.cfg.hardware.get("dist_timeout_min") or 30) * 60
        self._client = RolloutClient.start(self.model, self.plan, self.global_rank, self.global_step, prompts,
                                           self.stop_token_ids, log, timeout, self.device)

    def on_train_epoch_end(self) -> None:
        """This learner's vLLM engine asleep (level 2) once an epoch's training is done (generation.vllm_sleep=false
        keeps it awake between rollout batches only): the final validation and lm-eval get its memory back. Here and
        not only in on_train_end, which Lightning calls after the callbacks' (lm-eval at the end runs there)."""
        if self._colocated is not None:
            self._colocated.rest()

    on_train_end = on_train_epoch_end

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The policy version (optimizer steps applied) the weights are: a resumed run with generator processes
        samples from it again (rollout_workers.schedule: in-flight batches are discarded)."""
        super().on_save_checkpoint(checkpoint)
        r = self.plan.rollout
        checkpoint["hydralign"].update(policy_version=int(self.global_step), generator_devices=r.generator_devices,
                                       max_staleness=r.max_staleness)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx % self.plan.grad_accum == 0:
            self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After each optimizer step: the weight broadcast the schedule asks for (generator processes), then the
        step's seconds: sampling (here, or in the generator for this batch), waiting for the generator, the weight
        broadcast, and the rest (forwards, backwards, optimizer, scoring), logged when Lightning writes the logs."""
        if not batch["window_last"] or self._step_started is None:
            return
        if self._client is not None:  # global_step counts the step just applied: the policy version
            self._sync_s = self._client.sync(self.model, self.global_step)
        spent = time.perf_counter() - self._step_started
        first = batch["first_step"]
        generation = self._generation_s if first else 0.0
        times = {"time/generation_s": generation, "time/training_s": spent - generation}
        if self._client is not None:  # sampling ran elsewhere: the learner's own time is all but the waits
            waiting = (self._waiting_s if first else 0.0) + self._client.waited_s  # for a rollout or a receiver
            times.update({"time/waiting_s": waiting, "time/weight_sync_s": self._sync_s,
                          "time/training_s": spent - waiting - self._sync_s})
        elif self._colocated is not None:  # this learner's engine took the policy before sampling
            load = self._load_s if first else 0.0
            times.update({"time/weight_sync_s": load, "time/training_s": spent - generation - load})
        if (self.global_step % self.trainer.log_every_n_steps) == 0:
            self.log_dict(times, on_step=True, on_epoch=False)

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        ro, m, r = self._rollout, self.cfg.method, self.plan.rollout
        s, e = batch["samples"]
        sl = slice(s, e)  # local samples of the rollout batch (the schedule adds the mini-batch's offset)
        logps = completion_logps(self.model, ro.ids[sl], ro.attention[sl], ro.positions[sl], ro.width,
                                 float(m.temperature))
        old = ro.old_logps[sl] if ro.old_logps is not None else logps.detach()
        ref = ro.ref_logps[sl] if ro.ref_logps is not None else None
        mask = ro.loss_mask[sl]
        weight = ratio = outside = None
        if ro.sampler_logps is not None:  # the sampler was not this policy (a generator, maybe older weights)
            weight, ratio, outside = importance_weights(old, ro.sampler_logps[sl], mask, m.importance_sampling_mode,
                                                        float(m.importance_sampling_clip_max),
                                                        float(m.importance_sampling_clip_min))
        token_loss, clipped, kl = per_token_loss(logps, old, ro.advantages[sl], m.epsilon, m.epsilon_high, ref,
                                                 float(m.beta), is_weight=weight)
        loss_sum, _ = aggregate(token_loss, mask, r.loss_type, r.max_completion_length)
        counts = [float(v) for v in ro.mini_units[batch["mini"]]]
        units, tokens = max(counts[0], 1.0), counts[2]
        per_token = units / max(tokens, 1.0)
        fm = mask.float()
        with torch.no_grad():  # sums the base divides by the step's units: means over their own counts
            metrics = {k: v[sl].sum() * (units / max(counts[col], 1.0)) for k, (v, col) in ro.sample_metrics.items()}
            metrics["clip_fraction"] = (clipped.float() * fm).sum() * per_token
            metrics["kl"] = (kl * fm).sum() * per_token if kl is not None else torch.zeros((), device=fm.device)
            if ratio is not None:  # token means: the sampler-to-learner ratio, and how often its bound acted
                metrics["is/ratio_mean"] = (ratio * fm).sum() * per_token
                metrics["is/clipped_fraction"] = (outside.float() * fm).sum() * per_token
        return loss_sum, torch.tensor(float(e - s)), metrics

    # --- validation: the reference answers' loss, and the base's generation metrics ----------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, lengths = sequence_logps(logits, batch["labels"])
        sums = torch.stack([-logps.sum().double(), lengths.sum().double()])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        names, self._metric_names = self._metric_names, []  # validation has the loss and generation only
        try:
            super().on_validation_epoch_end()
        finally:
            self._metric_names = names
