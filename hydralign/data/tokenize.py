"""Chat messages -> token ids with a loss mask, plus the prompts and references used for generation."""

from __future__ import annotations

from dataclasses import dataclass

from hydralign.data.segments import Segment
from hydralign.data.templates import ChatTemplate

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken

    @property
    def num_loss_tokens(self) -> int:
        """Targets after the causal shift: label positions 1..n-1 that are not ignored."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)

    def sequences(self) -> tuple[Example, ...]:
        """The rows an item puts in a forward (a pair: chosen, rejected); collation reads items through this."""
        return (self,)

    def without_target(self) -> Example:
        """A filler that keeps ranks in step and adds nothing: no label left."""
        return Example(self.input_ids, [IGNORE] * len(self.input_ids))


@dataclass
class GenerationExample:
    prompt_ids: list[int]
    reference: str


@dataclass
class TokenizeStats:
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0  # nothing left to learn after truncation
    dropped_empty: int = 0  # preference pairs with an empty chosen or rejected answer
    dropped_identical: int = 0  # preference pairs whose chosen and rejected answers are the same

    def as_metrics(self, split: str) -> dict[str, float]:
        return {f"data/{split}_{k}": float(v) for k, v in vars(self).items()}


def _bos(tokenizer, template: ChatTemplate) -> list[int]:
    """The BOS token the template asks for (Tulu/Llama), or nothing."""
    return [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []


CHUNK = 4096  # conversations per tokenizer call: the tokenizer's own per-token buffers are freed after each


def _token_ids(tokenizer, texts: list[str], **kwargs) -> dict:
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                     **kwargs)


def tokenize_segments(tokenizer, template: ChatTemplate,
                      rendered: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
    """Rendered conversations -> (input_ids, labels) each, labels IGNORE on untrainable segments.
    Segments are tokenized in batched calls of ``CHUNK`` conversations; a template with ``tokenize_whole`` (auto)
    has each conversation tokenized as one string and labelled by offsets (see chat_auto)."""
    if getattr(template, "tokenize_whole", False) and tokenizer.is_fast:
        return _tokenize_whole(tokenizer, template, rendered)
    bos = _bos(tokenizer, template)
    out = []
    for start in range(0, len(rendered), CHUNK):
        part = rendered[start:start + CHUNK]
        # Each distinct segment once: role headers and end-of-turn markers repeat in every conversation (the default
        # job: 120,000 segments, 21,928 distinct; 3-6x less tokenizing). A segment's tokens do not depend on its
        # neighbours here, so this changes no id.
        distinct = list(dict.fromkeys(text for segs in part for text, _ in segs))
        ids = dict(zip(distinct, _token_ids(tokenizer, distinct)["input_ids"])) if distinct else {}
        for segs in part:
            input_ids, labels = list(bos), [IGNORE] * len(bos)
            for text, trainable in segs:
                piece = ids[text]
                input_ids.extend(piece)
                labels.extend(piece if trainable else [IGNORE] * len(piece))
            out.append((input_ids, labels))
    return out


def _tokenize_whole(tokenizer, template, rendered: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
    """Each conversation tokenized as one string; a token is trained when its character range overlaps
    a trainable segment (as transformers builds ``assistant_masks``)."""
    bos = _bos(tokenizer, template)
    out = []
    for start in range(0, len(rendered), CHUNK):
        part = rendered[start:start + CHUNK]
        enc = _token_ids(tokenizer, ["".join(text for text, _ in segs) for segs in part], return_offsets_mapping=True)
        for segs, ids, offsets in zip(part, enc["input_ids"], enc["offset_mapping"]):
            spans, pos = [], 0
            for text, trainable in segs:
                if trainable and text:
                    spans.append((pos, pos + len(text)))
                pos += len(text)
            labels, k = [IGNORE] * len(bos), 0
            for tid, (begin, end) in zip(ids, offsets):
                while k < len(spans) and spans[k][1] <= begin:
                    k += 1
                labels.append(tid if k < len(spans) and max(end, begin + 1) > spans[k][0] else IGNORE)
            out.append((bos + ids, labels))
    return out


def encode(tokenizer, template: ChatTemplate, conversations: list[list[dict]], max_len: int, overlong: str,
           train_on_all: bool = False) -> tuple[list[Example], TokenizeStats]:
    """Render every conversation through the template, tokenize all segments in one batched call,
    then truncate (right side) or drop over-long ones as configured."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"data.overlong={overlong} must be truncate or drop")
    eos = tokenizer.eos_token or ""
    rendered = [template.render(msgs, eos, train_on_all) for msgs in conversations]
    stats, examples = TokenizeStats(total=len(conversations)), []
    for input_ids, labels in tokenize_segments(tokenizer, template, rendered):
        if len(input_ids) > max_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                continue
            input_ids, labels = input_ids[:max_len], labels[:max_len]
            stats.truncated += 1
        example = Example(input_ids, labels)
        if example.num_loss_tokens == 0:
            stats.dropped_no_target += 1
            continue
        examples.append(example)
    stats.kept = len(examples)
    return examples, stats


def generation_examples(tokenizer, template: ChatTemplate, conversations: list[list[dict]],
                        fewshot: list[list[dict]] | None = None) -> list[GenerationExample]:
    """Prompt = (few-shot turns +) every turn before the last assistant turn; reference = that turn."""
    eos = tokenizer.eos_token or ""
    shots = [m for conv in (fewshot or []) for m in conv if m["role"] != "system"]
    prompts, refs = [], []
    for msgs in conversations:
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        head = msgs[:last]
        system = [m for m in head[:1] if m["role"] == "system"]
        prompts.append(template.render_prompt(system + shots + head[len(system):], eos))
        refs.append(msgs[last]["content"])
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    bos = _bos(tokenizer, template)
    return [GenerationExample(bos + p, r) for p, r in zip(ids, refs)]
