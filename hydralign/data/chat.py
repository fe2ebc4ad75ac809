"""A chat template by name (``model.chat_template``): the hand-written ones (``data.templates``) or the tokenizer's
own (``data.chat_auto``), behind one interface."""

from __future__ import annotations

from typing import Any

from hydralign.data.chat_auto import AutoChatTemplate
from hydralign.data.templates import NAMES, TEMPLATES, ChatTemplate
from hydralign.errors import ConfigError


def template_for(name: str, tokenizer: Any = None):
    """``chatml``/``tulu``: the hand-written ChatTemplate; ``auto``: the tokenizer's own chat template
    behind the same interface (``hydralign.data.chat_auto.AutoChatTemplate``)."""
    if name == "auto":
        if tokenizer is None:
            raise ValueError("template_for('auto') needs the tokenizer whose chat template it renders")
        return AutoChatTemplate(tokenizer)
    if name not in TEMPLATES:
        raise ConfigError(f"model.chat_template={name} is unknown; choose one of: {', '.join(NAMES)}")
    return TEMPLATES[name]


def get_template(name: str) -> ChatTemplate:
    """A hand-written template by name (``auto`` needs the tokenizer: use template_for)."""
    if name == "auto":
        raise ConfigError("model.chat_template=auto renders with the tokenizer's own template: "
                          "build it with template_for('auto', tokenizer)")
    return template_for(name)
