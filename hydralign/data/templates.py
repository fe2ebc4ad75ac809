"""Chat templates rendered as (text, trainable) segments, so the loss mask is exact by construction.

Each template also carries its Jinja form, which is saved with the tokenizer on export so the
exported model formats prompts the way it was trained (``jinja_for``: with BOS written first where the template puts
BOS before its text and the tokenizer adds none itself, as the character tokenizer does; without it, lm-eval and
every other ``apply_chat_template`` user would prompt the model without the BOS it was trained after).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hydralign.data.segments import Segment


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    turn_open: dict[str, str]  # role -> header written before the content
    turn_close: dict[str, str]  # role -> written after the content ("{eos}" becomes the eos token)
    trailing: str  # written after turn_close, never trained on
    special_tokens: tuple[str, ...]  # markers that must be single tokens
    add_bos: bool
    jinja: str
    tokenize_whole: ClassVar[bool] = False  # segments are tokenized one by one (see chat_auto)

    def close(self, role: str, eos_token: str) -> str:
        return self.turn_close[role].replace("{eos}", eos_token)

    def render(self, messages: list[dict], eos_token: str, train_on_all: bool = False,
               last_turn_only: bool = False) -> list[Segment]:
        """Whole conversation; assistant contents and their closing marker are trainable (with
        ``last_turn_only``, only the final message's: a preference pair's completion)."""
        segments: list[Segment] = []
        for i, msg in enumerate(messages):
            role = msg["role"]
            if role not in self.turn_open:
                raise ValueError(f"role {role!r} is not one of {sorted(self.turn_open)}")
            trainable = train_on_all or (role == "assistant" and (not last_turn_only or i == len(messages) - 1))
            segments.append((self.turn_open[role], train_on_all))
            segments.append((msg["content"] + self.close(role, eos_token), trainable))
            segments.append((self.trailing, train_on_all))
        return segments

    def render_prompt(self, messages: list[dict], eos_token: str) -> str:
        """Prompt for generation: every turn given, then the assistant header."""
        parts = []
        for msg in messages:
            role = msg["role"]
            parts.append(self.turn_open[role] + msg["content"] + self.close(role, eos_token) + self.trailing)
        return "".join(parts) + self.turn_open["assistant"]

    def jinja_for(self, tokenizer) -> str:
        """The Jinja to save with ``tokenizer``: ``add_bos`` templates write BOS first unless the tokenizer itself
        prepends it when encoding with special tokens (Llama's does: the template then stays as it was)."""
        bos = getattr(tokenizer, "bos_token_id", None)
        adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        return "{{ bos_token }}" + self.jinja if self.add_bos and bos is not None and not adds_bos else self.jinja

    def stop_tokens(self, eos_token: str) -> list[str]:
        """Tokens that end an assistant turn (generation stops at any of them)."""
        marker = self.close("assistant", eos_token)
        return sorted({m for m in (marker, eos_token) if m})


CHATML = ChatTemplate(
    name="chatml",
    turn_open={r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")},
    turn_close={r: "<|im_end|>" for r in ("system", "user", "assistant")},
    trailing="\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
    add_bos=False,
    jinja=("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
)

# open-instruct's "tulu" template: <|user|>\n...\n<|assistant|>\n...<eos>\n
TULU = ChatTemplate(
    name="tulu",
    turn_open={"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"},
    turn_close={"system": "", "user": "", "assistant": "{eos}"},
    trailing="\n",
    special_tokens=("<|system|>", "<|user|>", "<|assistant|>"),
    add_bos=True,
    jinja=("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\\n' + m['content'] + "
           "eos_token + '\\n' }}{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{% endif %}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
)

TEMPLATES = {t.name: t for t in (CHATML, TULU)}
NAMES = (*TEMPLATES, "auto")
