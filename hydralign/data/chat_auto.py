"""``model.chat_template=auto``: render with the tokenizer's own Jinja template and derive the loss
mask exactly from that template.

Trainable character spans come from the template's ``{% generation %}`` blocks where it has them
(the spans ``apply_chat_template(return_assistant_tokens_mask=True)`` uses), else from prefix
renders, as open-instruct masks by rendering prefixes: assistant message ``i`` is trainable from
where ``render(messages[:i], add_generation_prompt=True)`` stops matching ``render(messages[:i+1])``
(so exactly what the model writes after the generation prompt) to the end of
``render(messages[:i+1])`` less trailing whitespace (its content plus the end marker: ``<|eot_id|>``,
``<|im_end|>``, eos). A template that rewrites earlier text once later turns follow (a turn, or the
prompt the generation header follows) is refused: no exact mask exists for it.

``tokenize_whole`` asks ``tokenize_segments`` to tokenize each rendered conversation as one string
and mark a token trainable when its offsets overlap a trainable span, so input ids equal
``apply_chat_template(messages, tokenize=True)`` (after BOS when ``add_bos``) also for BPE and
SentencePiece tokenizers, where tokenizing pieces separately can split or prefix them differently.
Slow tokenizers (no offsets) fall back to tokenizing segment by segment.
"""

from __future__ import annotations

import re
from typing import Any

from hydralign.data.segments import Segment
from hydralign.errors import ConfigError

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
PROBE_USER, PROBE_ANSWER = "hydralign probe question", "hydralign probe answer"
FIX = "set model.chat_template=chatml or model.chat_template=tulu"


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _plain(messages: list[dict]) -> list[dict]:
    """Messages as apply_chat_template sees them: keys whose value is None dropped."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


class AutoChatTemplate:
    """The tokenizer's ``chat_template`` behind ChatTemplate's interface (render, render_prompt,
    stop_tokens). ``add_bos`` is True only when the template does not write the BOS text and the
    tokenizer itself prepends BOS to what it encodes (a Tulu-style template on a Llama tokenizer)."""

    special_tokens: tuple[str, ...] = ()
    tokenize_whole = True

    def __init__(self, tokenizer: Any):
        jinja = tokenizer.chat_template
        if isinstance(jinja, dict):  # named templates: the default one is the chat format
            jinja = jinja.get("default")
        if not jinja:
            raise ConfigError(f"model.chat_template=auto: the tokenizer has no chat template; {FIX}")
        self.name, self.tokenizer, self.jinja = "auto", tokenizer, jinja
        self.has_generation_tags = bool(GENERATION_TAG.search(jinja))
        try:
            text = self._render([{"role": "user", "content": PROBE_USER},
                                 {"role": "assistant", "content": PROBE_ANSWER}])[0]
        except Exception as err:  # the template's own raise_exception or a Jinja error
            raise ConfigError(f"model.chat_template=auto: the tokenizer's chat template cannot render a "
                              f"user/assistant exchange ({err}); {FIX}") from err
        bos = tokenizer.bos_token
        self.bos_text = bos if bos and text.startswith(bos) else ""
        self.add_bos = not self.bos_text and _tokenizer_adds_bos(tokenizer)
        at = text.rfind(PROBE_ANSWER)
        self.end_marker = text[at + len(PROBE_ANSWER):].rstrip() if at >= 0 else ""

    def _render(self, messages: list[dict], generation_prompt: bool = False,
                spans: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The template's text (as apply_chat_template writes it) and, with ``spans``, the character
        spans of its generation blocks."""
        from transformers.utils.chat_template_utils import render_jinja_template

        texts, indices = render_jinja_template(
            conversations=[_plain(messages)], chat_template=self.jinja, add_generation_prompt=generation_prompt,
            return_assistant_tokens_mask=spans, **self.tokenizer.special_tokens_map)
        return texts[0], (indices[0] if spans else [])

    def _turn_start(self, messages: list[dict], i: int, text: str) -> int:
        """Where message i's generated part begins in ``text``: the end of its generation prompt."""
        return _common_prefix_len(self._render(messages[:i], generation_prompt=True)[0], text)

    def _turn_span(self, messages: list[dict], i: int, full: str) -> tuple[int, int]:
        before, upto = self._render(messages[:i])[0], self._render(messages[: i + 1])[0]
        start = self._turn_start(messages, i, upto)
        if not (full.startswith(upto) and upto.startswith(before) and start >= len(before)):
            raise ConfigError(
                f"model.chat_template=auto: the tokenizer's chat template writes the turns up to message {i} "
                "differently once later messages follow, so its loss mask cannot be derived exactly; give the "
                f"template {{% generation %}} markers around assistant replies, or {FIX}")
        return start, max(start, len(upto.rstrip()))

    def render(self, messages: list[dict], eos_token: str, train_on_all: bool = False,
               last_turn_only: bool = False) -> list[Segment]:
        """Whole conversation as (text, trainable) segments; assistant replies and their end marker are
        trainable (with ``last_turn_only``, only the final message's). ``eos_token`` is unused: the
        template renders with the tokenizer's own special tokens."""
        text, tagged = self._render(messages, spans=self.has_generation_tags and not train_on_all)
        last = len(messages) - 1
        if train_on_all:
            spans = [(0, len(text))]
        elif last_turn_only and messages[last]["role"] != "assistant":
            spans = []
        elif self.has_generation_tags:
            spans = tagged
            if last_turn_only:
                start = self._turn_start(messages, last, text)
                spans = [(max(s, start), e) for s, e in tagged if e > start]
        else:
            turns = [last] if last_turn_only else [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            spans = [self._turn_span(messages, i, text) for i in turns]
        return _segments(text, spans, len(self.bos_text))

    def render_prompt(self, messages: list[dict], eos_token: str) -> str:
        """Prompt for generation: every turn given, then the template's generation prompt."""
        return self._render(messages, generation_prompt=True)[0]

    def stop_tokens(self, eos_token: str) -> list[str]:
        """Tokens that end an assistant turn: the end marker found by rendering (when it is one token,
        else the special tokens in it) and eos."""
        tok, found = self.tokenizer, {eos_token} if eos_token else set()
        if self.end_marker:
            pieces = tok.convert_ids_to_tokens(tok(self.end_marker, add_special_tokens=False)["input_ids"])
            special = set(tok.all_special_tokens) | set(tok.added_tokens_encoder)
            found |= set(pieces) if len(pieces) == 1 else {p for p in pieces if p in special}
        return sorted(found)


def _segments(text: str, spans: list[tuple[int, int]], floor: int) -> list[Segment]:
    """Cut ``text`` into (piece, trainable) segments; nothing before ``floor`` (a BOS text) is trainable."""
    segments: list[Segment] = []
    pos = 0
    if floor:
        segments.append((text[:floor], False))
        pos = floor
    for s, e in sorted(spans):
        s = max(s, pos)
        if e <= s:
            continue
        if s > pos:
            segments.append((text[pos:s], False))
        segments.append((text[s:e], True))
        pos = e
    if pos < len(text):
        segments.append((text[pos:], False))
    return segments

