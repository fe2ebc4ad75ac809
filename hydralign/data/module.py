"""The data module: read -> split -> tokenize once, then serve micro-batches per the plan."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hydralign.data import readers
from hydralign.data.arithmetic import make_splits
from hydralign.data.batching import EvalBatches, ResumableSequentialSampler, TrainMicroBatches, WindowSchedule
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import GenerationExample, TokenizeStats, encode, generation_examples
from hydralign.errors import ConfigError, DataError
from hydralign.plan import Plan


def load_conversations(cfg: Any) -> dict[str, list[list[dict]]]:
    """{"train": [...], "val": [...]} chat conversations for the configured source."""
    dcfg = cfg.data
    if dcfg.source == "arithmetic":
        a = dcfg.arithmetic
        splits = make_splits(cfg.seed, a.num_train, a.num_val, a.num_test, a.max_digits, a.system_prompt,
                             a.pad_operands)
        return {k: [r["messages"] for r in v] for k, v in splits.items()}
    fields = readers.Fields(dcfg.messages_field, dcfg.prompt_field, dcfg.completion_field)

    def convert(records: list[tuple[Any, str]], where: str) -> list[list[dict]]:
        if not records:
            raise DataError(f"the {where} data set is empty")
        return [readers.to_messages(rec, origin, fields) for rec, origin in records]

    if dcfg.source == "files":
        if not dcfg.train_files:
            raise ConfigError("data.source=files needs data.train_files=[/path/train.jsonl, ...]")
        train = convert(readers.read_files(list(dcfg.train_files)), f"train ({', '.join(dcfg.train_files)})")
        val = convert(readers.read_files(list(dcfg.val_files)), "val") if dcfg.val_files else []
    elif dcfg.source == "hub":
        if not dcfg.hub_id:
            raise ConfigError("data.source=hub needs data.hub_id")
        train = convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.train_split), dcfg.hub_id)
        val = (convert(readers.read_hub(dcfg.hub_id, dcfg.hub_config, dcfg.val_split), dcfg.hub_id)
               if dcfg.val_split else [])
    else:
        raise ConfigError(f"data.source={dcfg.source} must be arithmetic, files or hub")
    if not val:
        if not 0 < dcfg.val_fraction < 1:
            raise ConfigError("no validation data: give data.val_files (or data.val_split for hub sets) or "
                              "data.val_fraction=0.02 to hold out part of train")
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, int(round(len(train) * dcfg.val_fraction)))
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in sorted(order[n_val:])]
    return {"train": train, "val": val}


class PostTrainingData(L.LightningDataModule):
    def __init__(self, cfg: Any, tokenizer: Any, template: ChatTemplate):
        super().__init__()
        self.cfg, self.tokenizer, self.template = cfg, tokenizer, template
        self.stats: dict[str, TokenizeStats] = {}
        self.plan: Plan | None = None

    def load(self) -> None:
        dcfg, train_on_all = self.cfg.data, not self.cfg.method.completion_only
        convs = load_conversations(self.cfg)
        self.train_examples, self.stats["train"] = encode(self.tokenizer, self.template, convs["train"],
                                                          dcfg.max_seq_len, dcfg.overlong, train_on_all)
        self.val_examples, self.stats["val"] = encode(self.tokenizer, self.template, convs["val"],
                                                      dcfg.max_seq_len, dcfg.overlong, train_on_all)
        if not self.train_examples:
            raise DataError(f"no train example survived tokenization ({self.stats['train']}); raise "
                            "data.max_seq_len or use data.overlong=truncate")
        ecfg = self.cfg.eval
        shots = convs["train"][: ecfg.num_fewshot] if ecfg.prompt_format == "few_shot" else []
        self.generation_examples: list[GenerationExample] = generation_examples(
            self.tokenizer, self.template, convs["val"][: ecfg.num_generate], shots)

    def summary(self) -> str:
        parts = []
        for split, s in self.stats.items():
            parts.append(f"{split} {s.kept}/{s.total} kept (truncated {s.truncated}, dropped over-long "
                         f"{s.dropped_overlong}, dropped with no target {s.dropped_no_target})")
        return "data: " + "; ".join(parts) + f"; {len(self.generation_examples)} generation prompts"

    def train_dataloader(self) -> DataLoader:
        plan, trainer = self.plan, self.trainer
        schedule = WindowSchedule([e.num_loss_tokens for e in self.train_examples], plan.effective_batch,
                                  plan.micro_batch, plan.world_size, trainer.global_rank, plan.seed)
        data = TrainMicroBatches(self.train_examples, schedule, self.tokenizer.pad_token_id, plan.total_steps)
        # Resume: continue after the last completed optimizer step (read when iteration starts).
        sampler = ResumableSequentialSampler(len(data), lambda: trainer.global_step * plan.grad_accum)
        return DataLoader(data, batch_size=None, sampler=sampler, num_workers=self.cfg.data.num_workers,
                          persistent_workers=self.cfg.data.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        data = EvalBatches(self.val_examples, self.cfg.eval.batch_size, self.tokenizer.pad_token_id,
                           self.plan.world_size, self.trainer.global_rank)
        return DataLoader(data, batch_size=None, shuffle=False)
