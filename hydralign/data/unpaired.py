"""Unpaired feedback (KTO): raw records -> (prompt messages, completion, desirable) -> token ids, each example with a
mismatched twin for the KL estimate.

Accepted record shapes, as TRL's unpaired format (field names from ``data.prompt_field/completion_field/label_field``):
- ``{"prompt": "...", "completion": "...", "label": true}`` (strings, or TRL's conversational lists: ``prompt`` a list
  of messages, ``completion`` ``[{"role": "assistant", ...}]``);
- a preference pair (``data.chosen_field`` / ``rejected_field``, every shape ``data.preference`` reads) becomes two
  examples, the chosen answer desirable and the rejected one not, as TRL's ``unpair_preference_dataset`` does.

The KL estimate (Ethayarajh et al. 2024, sec. 4.1) needs completions the model was not asked for: example i's twin
is its own prompt followed by the completion of example ``partner[i]``, a fixed derangement drawn from the data seed
(TRL shifts completions by one inside each batch instead; a fixed partner makes the twin's reference log-prob
precomputable, and the estimate independent of how a step is split into micro-batches).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from hydralign.data.preference import PairFields, to_pair
from hydralign.data.readers import _as_turns, _check_messages
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import Example, TokenizeStats, tokenize_segments
from hydralign.errors import DataError


@dataclass(frozen=True)
class UnpairedFields:
    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"
    pair: PairFields = PairFields()


@dataclass
class UnpairedItem:
    prompt: list[dict]  # every turn before the answer
    completion: str
    desirable: bool


@dataclass
class UnpairedExample:
    seq: Example  # prompt + its completion, loss mask on the completion
    kl: Example  # prompt + another example's completion (the KL estimate's twin)
    desirable: bool
    FIELDS: ClassVar[tuple[str, ...]] = ("desirable",)  # collated into the batch beside the rows

    @property
    def num_loss_tokens(self) -> int:
        return self.seq.num_loss_tokens

    def sequences(self) -> tuple[Example, Example]:
        return (self.seq, self.kl)

    def without_target(self) -> UnpairedExample:
        """A filler keeps its labels (finite log-probs); the batch's ``real`` False masks it."""
        return self


def _label(record: dict, origin: str, field: str) -> bool:
    value = record[field]
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise DataError(f"{origin}: field '{field}' must be true (desirable) or false (undesirable), found {value!r}")


def to_unpaired(record: Any, origin: str, fields: UnpairedFields) -> tuple[list[UnpairedItem], Optional[str]]:
    """One raw record -> (items, None): one item, or two for a preference pair; or ([], reason) for a pair that is
    skipped (``empty``, ``identical``). Raises DataError for a malformed record, naming its origin (file:line)."""
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected a JSON object, found {type(record).__name__}")
    if fields.pair.chosen in record and fields.pair.rejected in record:
        pair, reason = to_pair(record, origin, fields.pair)
        if pair is None:
            return [], reason
        return [UnpairedItem(pair.prompt, pair.chosen, True), UnpairedItem(pair.prompt, pair.rejected, False)], None
    missing = [f for f in (fields.prompt, fields.completion, fields.label) if f not in record]
    if missing:
        raise DataError(f"{origin}: missing field(s) {missing} for unpaired feedback; fields found: {sorted(record)}. "
                        "Point data.prompt_field/data.completion_field/data.label_field at the right names, or give "
                        f"preference pairs ('{fields.pair.chosen}'/'{fields.pair.rejected}')")
    prompt = _as_turns(record[fields.prompt], "user", origin, fields.prompt)
    answer = _as_turns(record[fields.completion], "assistant", origin, fields.completion)
    messages = _check_messages(prompt + answer, origin, f"{fields.prompt}+{fields.completion}")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return [], "empty"
    return [UnpairedItem(messages[:-1], messages[-1]["content"], _label(record, origin, fields.label))], None


def kl_partners(n: int, seed: int) -> list[int]:
    """partner[i] != i for n > 1: a random cycle over the examples, from the data seed."""
    order = list(range(n))
    random.Random(seed * 7_919 + 3).shuffle(order)
    partner = [0] * n
    for j, i in enumerate(order):
        partner[i] = order[(j + 1) % n]
    return partner


def encode_unpaired(tokenizer, template: ChatTemplate, items: list[UnpairedItem], max_len: int, overlong: str,
                    stats: TokenizeStats, seed: int) -> list[UnpairedExample]:
    """Each completion, and its twin, rendered after the prompt with the loss mask on the answer. An over-long
    example is truncated on the right or dropped (``overlong``; its twin is truncated either way); one left without
    a target is dropped. Counts go into ``stats`` (which already holds the skipped records)."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"data.overlong={overlong} must be truncate or drop")
    eos, partner = tokenizer.eos_token or "", kl_partners(len(items), seed)
    rendered = []
    for i, item in enumerate(items):
        for answer in (item.completion, items[partner[i]].completion):
            msgs = item.prompt + [{"role": "assistant", "content": answer}]
            rendered.append(template.render(msgs, eos, last_turn_only=True))
    encoded = tokenize_segments(tokenizer, template, rendered)
    out: list[UnpairedExample] = []
    for i, item in enumerate(items):
        (ids, labels), (kl_ids, kl_labels) = encoded[2 * i], encoded[2 * i + 1]
        cut = len(ids) > max_len
        if cut and overlong == "drop":
            stats.dropped_overlong += 1
            continue
        seq = Example(ids[:max_len], labels[:max_len])
        if seq.num_loss_tokens == 0:
            stats.dropped_no_target += 1
            continue
        stats.truncated += int(cut)
        out.append(UnpairedExample(seq, Example(kl_ids[:max_len], kl_labels[:max_len]), item.desirable))
    stats.kept = len(out)
    return out
