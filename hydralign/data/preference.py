"""Preference pairs: raw records -> (prompt messages, chosen, rejected) -> token ids with a mask on the
completion only.

Accepted record shapes (field names from ``data.prompt_field/chosen_field/rejected_field``):
- strings: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``;
- TRL conversational: ``prompt`` a list of messages, ``chosen``/``rejected`` ``[{"role": "assistant", ...}]``;
- UltraFeedback: ``chosen``/``rejected`` whole conversations ending in the assistant answer (their shared
  head is the prompt; a ``prompt`` string, if present, must be its last user turn).
Pairs with an empty or identical chosen/rejected are counted and skipped; malformed records name
their origin (file:line) and the fields found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydralign.data.readers import _as_turns, _check_messages
from hydralign.data.templates import ChatTemplate
from hydralign.data.tokenize import Example, TokenizeStats, tokenize_segments
from hydralign.errors import DataError


@dataclass(frozen=True)
class PairFields:
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass
class Pair:
    prompt: list[dict]  # every turn before the answer
    chosen: str
    rejected: str


@dataclass
class PairExample:
    chosen: Example
    rejected: Example

    @property
    def num_loss_tokens(self) -> int:
        return self.chosen.num_loss_tokens + self.rejected.num_loss_tokens

    def sequences(self) -> tuple[Example, Example]:
        return (self.chosen, self.rejected)

    def without_target(self) -> PairExample:
        """A filler pair keeps its labels (its log-probs stay finite); the batch's ``real`` False masks it."""
        return self


def _split_answer(turns: list[dict], origin: str, field: str) -> tuple[list[dict], str]:
    last = turns[-1] if turns else None
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise DataError(f"{origin}: field '{field}' must be a string or messages ending in an assistant turn")
    return turns[:-1], last["content"]


def to_pair(record: Any, origin: str, fields: PairFields) -> tuple[Optional[Pair], Optional[str]]:
    """One raw record -> (pair, None), or (None, reason) for a pair that is skipped (``empty``,
    ``identical``). Raises DataError for a malformed record."""
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected a JSON object, found {type(record).__name__}")
    missing = [f for f in (fields.chosen, fields.rejected) if f not in record]
    if missing:
        raise DataError(f"{origin}: missing field(s) {missing} for a preference pair; fields found: "
                        f"{sorted(record)}. Point data.chosen_field/data.rejected_field/data.prompt_field at "
                        "the right names")
    head_c, chosen = _split_answer(_as_turns(record[fields.chosen], "assistant", origin, fields.chosen), origin,
                                   fields.chosen)
    head_r, rejected = _split_answer(_as_turns(record[fields.rejected], "assistant", origin, fields.rejected),
                                     origin, fields.rejected)
    if head_c != head_r:
        raise DataError(f"{origin}: '{fields.chosen}' and '{fields.rejected}' carry different conversations "
                        "before the answer; a pair must share one prompt")
    given = (_as_turns(record[fields.prompt], "user", origin, fields.prompt)
             if record.get(fields.prompt) is not None else [])
    if head_c:
        if given and given != head_c and not (len(given) == 1 and given[0].get("content") == head_c[-1].get("content")):
            raise DataError(f"{origin}: '{fields.prompt}' differs from the conversation in '{fields.chosen}'")
        prompt = head_c
    elif given:
        prompt = given
    else:
        raise DataError(f"{origin}: no prompt: give '{fields.prompt}' or whole conversations in "
                        f"'{fields.chosen}'/'{fields.rejected}'; fields found: {sorted(record)}")
    _check_messages(prompt + [{"role": "assistant", "content": chosen}], origin, fields.prompt)
    if not chosen.strip() or not rejected.strip():
        return None, "empty"
    if chosen.strip() == rejected.strip():
        return None, "identical"
    return Pair(prompt=[{"role": m["role"], "content": m["content"]} for m in prompt], chosen=chosen,
                rejected=rejected), None


def encode_pairs(tokenizer, template: ChatTemplate, pairs: list[Pair], max_len: int, overlong: str,
                 stats: TokenizeStats) -> list[PairExample]:
    """Both answers rendered after the same prompt, loss mask on the final answer only. An over-long
    sequence is truncated on the right or dropped (``overlong``); a pair left without a target in
    either answer is dropped. Counts go into ``stats`` (which already holds the skipped pairs)."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"data.overlong={overlong} must be truncate or drop")
    eos = tokenizer.eos_token or ""
    rendered = []
    for p in pairs:
        for answer in (p.chosen, p.rejected):
            msgs = p.prompt + [{"role": "assistant", "content": answer}]
            rendered.append(template.render(msgs, eos, last_turn_only=True))
    encoded = tokenize_segments(tokenizer, template, rendered)
    out: list[PairExample] = []
    for i in range(len(pairs)):
        seqs, cut = [], False
        for input_ids, labels in encoded[2 * i:2 * i + 2]:
            if len(input_ids) > max_len:
                cut = True
                input_ids, labels = input_ids[:max_len], labels[:max_len]
            seqs.append(Example(input_ids, labels))
        if cut and overlong == "drop":
            stats.dropped_overlong += 1
            continue
        if any(s.num_loss_tokens == 0 for s in seqs):
            stats.dropped_no_target += 1
            continue
        stats.truncated += int(cut)
        out.append(PairExample(seqs[0], seqs[1]))
    stats.kept = len(out)
    return out
