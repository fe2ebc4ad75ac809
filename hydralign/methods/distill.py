"""Knowledge distillation: the policy (the student) learns from a frozen teacher named by
``method.teacher_from`` (any checkpoint reference, ``hydralign.checkpoints.references``); ``method.loss`` picks how.

    forward_kl | reverse_kl | jsd   token-level, on the data's completion tokens: one teacher forward and one
                                    student forward per micro-batch (``hydralign.losses.distill``)
    seqkd                           SFT on the teacher's greedy answers to the data's prompts (Kim & Rush
                                    2016, https://arxiv.org/abs/1606.07947), generated once and cached on
                                    disk (``teacher_cache.py``): no teacher in memory while training
    minillm                         on-policy reverse KL (Gu et al. 2024): the student samples answers to
                                    the batch's prompts (teacher-mixed with ``method.teacher_mix``), the
                                    teacher scores them; policy gradient with the single-step decomposition
                                    and length normalization

Every loss may add ``method.sft_weight`` x the student's NLL on the data (MiniLLM's pretraining term).
Metrics, sums per data token that the base turns into per-step means: ``distill/kd`` (the KD loss; for
minillm the reverse KL on the student's samples), ``distill/nll`` (the student's NLL on the data),
``distill/agreement`` (teacher and student argmax agree, over the tokens the KD loss covers), and for the
generating losses ``distill/length_ratio`` (generated tokens per data token), ``minillm/reward``,
``minillm/weight``. Quantities on generated tokens enter as per-sequence means weighted by the sequence's
data tokens (``per_sequence_share``): the step's normalizer stays the data's token count, known on every
rank before the step (DESIGN.md section 5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from hydralign.data.batching import collate
from hydralign.data.tokenize import IGNORE, Example
from hydralign.errors import ConfigError
from hydralign.losses.distill import (
    argmax_agreement,
    kd_loss,
    minillm_token_terms,
    per_sequence_share,
    token_log_probs,
)
from hydralign.losses.token_ce import token_nll_sum
from hydralign.methods.base import PostTrainingModule

Tensor = torch.Tensor


# --- the teacher -----------------------------------------------------------------------------------
def teacher_dir_of(cfg: Any) -> Path:
    """The Hugging Face directory of ``method.teacher_from`` (a training checkpoint is exported once)."""
    from hydralign.checkpoints.references import resolve_model_dir

    return resolve_model_dir(str(cfg.method.teacher_from), cfg.logger.tracking_uri, what="method.teacher_from")


def student_tokenizer(cfg: Any):
    """The student's tokenizer exactly as ``hydralign.run.build`` builds it (template markers included)."""
    from hydralign.models import tokenizer_and_template

    return tokenizer_and_template(cfg.model)[0]


def tokenizer_differences(student: Any, teacher: Any) -> list[str]:
    """What keeps the two tokenizers from being one (vocabulary, ids, special tokens); empty if none."""
    diffs = []
    sv, tv = student.get_vocab(), teacher.get_vocab()
    if sv != tv:
        only_s, only_t = sorted(set(sv) - set(tv)), sorted(set(tv) - set(sv))
        moved = sorted(k for k in set(sv) & set(tv) if sv[k] != tv[k])
        diffs.append(f"vocabularies differ (student {len(sv)} tokens, teacher {len(tv)}; only the student has "
                     f"{only_s[:5]}, only the teacher {only_t[:5]}, other ids for {moved[:5]})")
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        a, b = getattr(student, name, None), getattr(teacher, name, None)
        if a != b:
            diffs.append(f"{name} {a!r} (student) vs {b!r} (teacher)")
    sa, ta = set(student.all_special_tokens), set(teacher.all_special_tokens)
    if sa != ta:
        diffs.append(f"special tokens: only the student has {sorted(sa - ta)}, only the teacher {sorted(ta - sa)}")
    return diffs


def check_shared_tokenizer(student: Any, teacher_dir: Path, reference: str) -> None:
    """Refuse a teacher whose tokenizer is not the student's: its logits would index other tokens."""
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(str(teacher_dir))
    if teacher.pad_token is None:  # as build_tokenizer does for the student
        teacher.pad_token = teacher.eos_token
    diffs = tokenizer_differences(student, teacher)
    if diffs:
        raise ConfigError(f"method.teacher_from={reference} ({teacher_dir}) does not share the student's tokenizer: "
                          + "; ".join(diffs) + ". Distillation compares next-token distributions token by token: "
                          "give the student the teacher's tokenizer (model.tokenizer=<teacher dir> and the same "
                          "model.chat_template), or a teacher trained with the student's")


def load_teacher(cfg: Any, teacher_dir: Path, skeleton: bool = False) -> torch.nn.Module:
    """The frozen teacher (``.eval()``, no gradients) in ``model.dtype``; ``skeleton``: its modules on the meta
    device (no weights read), for FSDP2 ranks other than 0, which receive rank 0's shards."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hydralign.models.policy import DTYPES

    kwargs: dict[str, Any] = {"dtype": DTYPES[cfg.model.dtype]}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    if skeleton:
        with torch.device("meta"):
            teacher = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(teacher_dir)), **kwargs)
    else:
        teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir), **kwargs)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# --- batches -------------------------------------------------------------------------------------
def prompt_of(input_ids: list[int], labels: list[int]) -> list[int]:
    """The tokens before the first target (the conversation up to the assistant's answer)."""
    first = next((j for j, t in enumerate(labels) if t != IGNORE), len(input_ids))
    return list(input_ids[:first])


def batch_prompts(batch: dict) -> list[list[int]]:
    ids, labels, mask = batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].sum(1).tolist()
    return [prompt_of(i[:n], lab[:n]) for i, lab, n in zip(ids, labels, mask)]


def completion_examples(prompts: list[list[int]], completions: list[list[int]], real: list[bool]) -> list[Example]:
    """prompt + completion rows, the completion as target (none for a filler row)."""
    return [Example(p + c, [IGNORE] * len(p) + (c if r else [IGNORE] * len(c)))
            for p, c, r in zip(prompts, completions, real)]


def data_tokens(labels: Tensor) -> Tensor:
    """Each row's targets after the causal shift [B] (its share of the step's normalizer)."""
    return (labels[:, 1:] != IGNORE).sum(dim=1)


def stack(batches: list[dict], pad_id: int) -> dict[str, Tensor]:
    """Rows of several right-padded batches in one batch (one forward), padded to the widest."""
    width = max(b["input_ids"].shape[1] for b in batches)

    def pad(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return {"input_ids": torch.cat([pad(b["input_ids"], pad_id) for b in batches]),
            "attention_mask": torch.cat([pad(b["attention_mask"], 0) for b in batches]),
            "labels": torch.cat([pad(b["labels"], IGNORE) for b in batches])}


class DistillModule(PostTrainingModule):
    def __init__(self, *args: Any, teacher: Optional[torch.nn.Module] = None, teacher_dir: Optional[Path] = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        m = self.cfg.method
        self.loss_name = m.loss
        self.teacher_dir = teacher_dir
        # The base's plain dict: the teacher stays out of state_dict, the optimizer and Lightning's moves;
        # configure_model shards it under FSDP2 like the policy.
        self._frozen = {"teacher": teacher} if teacher is not None else {}
        self.vocab = len(self.tokenizer)  # the shared tokenizer's size: padded embedding rows are cut off
        self.max_new_tokens = int(m.max_new_tokens or self.cfg.eval.max_new_tokens)
        self.generations: Optional[dict[str, list[Example]]] = None  # seqkd: the teacher's answers per split

    @classmethod
    def check_before_models(cls, cfg: Any, tokenizer: Any) -> None:
        """The teacher's tokenizer against the student's, before any data or model loads."""
        check_shared_tokenizer(tokenizer, teacher_dir_of(cfg), str(cfg.method.teacher_from))

    @classmethod
    def frozen_models(cls, cfg: Any, policy: torch.nn.Module) -> dict[str, Any]:
        """The teacher (its tokenizer was checked by ``check_before_models``, before anything loaded).
        seqkd keeps only the teacher's directory: its answers come from the cache, generated on a miss."""
        teacher_dir = teacher_dir_of(cfg)
        if cfg.method.loss == "seqkd":
            return {"teacher_dir": teacher_dir}
        rank = int(os.environ.get("RANK", "0"))
        teacher = load_teacher(cfg, teacher_dir, skeleton=cfg.hardware.strategy == "fsdp" and rank != 0)
        if rank == 0:
            print(f"teacher: {teacher_dir} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters, "
                  f"frozen, loss {cfg.method.loss}); its tokenizer is the student's", flush=True)
        return {"teacher": teacher, "teacher_dir": teacher_dir}

    # --- where the teacher lives -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.loss_name == "seqkd" and self.generations is None:
            self.generations = self._teacher_generations(self.trainer.datamodule)

    def _teacher_generations(self, data: Any) -> dict[str, list[Example]]:
        """seqkd: the teacher's greedy answer to every train and val prompt, from the cache or generated now
        (by whichever process takes the cache's lock first, with the whole teacher on its device)."""
        from hydralign.generation import greedy
        from hydralign.methods import teacher_cache as tc

        cfg, plan = self.cfg, self.plan
        prompts = {s: [prompt_of(e.input_ids, e.labels) for e in getattr(data, f"{s}_examples")] for s in tc.SPLITS}
        key, described = tc.cache_key(self.teacher_dir, cfg.model.dtype, plan.precision, self.max_new_tokens,
                                      self.stop_token_ids, prompts)
        device = self.trainer.strategy.root_device
        autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(plan.precision)

        def generate() -> dict[str, list[list[int]]]:
            teacher = load_teacher(cfg, self.teacher_dir).to(device)
            out: dict[str, list[list[int]]] = {}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                for s in tc.SPLITS:
                    out[s] = []
                    for i in range(0, len(prompts[s]), cfg.eval.batch_size):
                        chunk = prompts[s][i:i + cfg.eval.batch_size]
                        out[s] += [c for c, _ in greedy(teacher, chunk, self.tokenizer.pad_token_id,
                                                        self.stop_token_ids, self.max_new_tokens, device,
                                                        keep_stop=True)]
            return out

        sizes = {s: len(prompts[s]) for s in tc.SPLITS}
        completions, report = tc.load_or_generate(tc.default_cache_dir(cfg), key, described, sizes, generate)
        if self.trainer.is_global_zero:
            print(f"teacher answers (seqkd): {'read from' if report['hit'] else 'generated into'} {report['path']} "
                  f"in {report['seconds']:.1f} s", flush=True)
        max_len = cfg.data.max_seq_len
        return {s: [Example(ex.input_ids[:max_len], ex.labels[:max_len])
                    for ex in completion_examples(prompts[s], completions[s], [True] * sizes[s])]
                for s in tc.SPLITS}

    # --- the step --------------------------------------------------------------------------------
    def batch_loss(self, batch: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if self.loss_name == "seqkd":
            return self._seqkd(batch)
        if self.loss_name == "minillm":
            return self._minillm(batch)
        return self._token_kd(batch)

    def _token_kd(self, batch: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        m, v = self.cfg.method, self.vocab
        ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        with torch.no_grad():  # the teacher first: its activations are gone before the student's are kept
            t_logits = self._frozen["teacher"](input_ids=ids, attention_mask=attn).logits[:, :-1, :v]
        logits = self.model(input_ids=ids, attention_mask=attn).logits
        mask = labels[:, 1:] != IGNORE
        s_logits = logits[:, :-1, :v]
        kd = kd_loss(m.loss, s_logits, t_logits, mask, m.temperature, m.jsd_beta)
        nll, tokens = token_nll_sum(logits, labels)
        with torch.no_grad():
            agree = argmax_agreement(s_logits, t_logits, mask).to(kd.dtype)
        return kd + m.sft_weight * nll, tokens, {"distill/kd": kd, "distill/nll": nll, "distill/agreement": agree}

    def _seqkd(self, batch: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        m, pad = self.cfg.method, self.tokenizer.pad_token_id
        answers = self.generations[batch["split"]]
        real = batch["real"].tolist()
        rows = [answers[i] if r else Example(answers[i].input_ids, [IGNORE] * len(answers[i].input_ids))
                for i, r in zip(batch["index"].tolist(), real)]
        n = len(rows)
        both = stack([{k: v.to(self.device) for k, v in collate(rows, pad).items()},
                      {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}], pad)
        logits = self.model(input_ids=both["input_ids"], attention_mask=both["attention_mask"]).logits
        targets = both["labels"][:n, 1:]
        mask = targets != IGNORE
        safe = torch.where(mask, targets, torch.zeros_like(targets))
        d = data_tokens(both["labels"][n:])
        token_nll = -token_log_probs(logits[:n, :-1, :self.vocab], safe)
        kd = per_sequence_share(token_nll, mask, d).sum()
        nll, tokens = token_nll_sum(logits[n:], both["labels"][n:])
        with torch.no_grad():
            hits = (logits[:n, :-1, :self.vocab].argmax(-1) == targets).float()
            metrics = {"distill/kd": kd, "distill/nll": nll, "distill/agreement": per_sequence_share(hits, mask, d).sum(),
                       "distill/length_ratio": mask.sum().to(kd.dtype)}
        return kd + m.sft_weight * nll, tokens, metrics

    def _row_seeds(self, batch: dict) -> list[int]:
        """One sampling seed per example and step: its sample depends on neither batch nor world size."""
        split = 1 if batch["split"] == "val" else 0
        base = (int(self.cfg.seed) * 1_000_003 + int(self.global_step)) * 2 + split
        return [base * 10_000_019 + i for i in batch["index"].tolist()]

    def _minillm(self, batch: dict) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        from hydralign.generation import sample

        m, pad, v = self.cfg.method, self.tokenizer.pad_token_id, self.vocab
        teacher = self._frozen["teacher"]
        alpha = float(m.teacher_mix) if self.training else 0.0  # validation scores the student's own samples
        prompts = batch_prompts(batch)
        was_training = self.model.training
        self.model.eval()
        drawn = sample(self.model, prompts, pad, self.stop_token_ids, self.max_new_tokens, self.device,
                       self._row_seeds(batch), mix_model=teacher if alpha > 0 else None, mix_alpha=alpha,
                       vocab_size=v, synced=self.sharded_generation())
        self.model.train(was_training)
        rows = completion_examples(prompts, [c for c, _ in drawn], batch["real"].tolist())
        n = len(rows)
        both = stack([{k: t.to(self.device) for k, t in collate(rows, pad).items()},
                      {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}], pad)
        with torch.no_grad():
            t_logits = teacher(input_ids=both["input_ids"][:n], attention_mask=both["attention_mask"][:n]).logits
        logits = self.model(input_ids=both["input_ids"], attention_mask=both["attention_mask"]).logits
        targets = both["labels"][:n, 1:]
        mask = targets != IGNORE
        s_logits = logits[:n, :-1, :v]
        terms = minillm_token_terms(s_logits, t_logits[:, :-1, :v], targets, mask, alpha)
        d = data_tokens(both["labels"][n:])

        def share(x: Tensor) -> Tensor:
            return per_sequence_share(x, mask, d).sum()

        surrogate = share(terms["loss"])
        # Its value is the importance-weighted reverse KL; its gradient MiniLLM's (the score-function term
        # enters with value 0), so train/loss and val/loss read as a divergence.
        kd = share(terms["weighted_kl"]).detach() + (surrogate - surrogate.detach())
        nll, tokens = token_nll_sum(logits[n:], both["labels"][n:])
        with torch.no_grad():
            agree = (s_logits.argmax(-1) == t_logits[:, :-1, :v].argmax(-1)).float()
            metrics = {"distill/kd": share(terms["reverse_kl"]), "distill/nll": nll,
                       "distill/agreement": share(agree), "distill/length_ratio": mask.sum().to(nll.dtype),
                       "minillm/reward": share(terms["reward"]), "minillm/weight": share(terms["weight"])}
        return kd + m.sft_weight * nll, tokens, metrics
