"""A rendered conversation is a list of segments: (text, whether the loss is computed on it). A leaf, shared by
the hand-written templates (``data.templates``) and the tokenizer's own (``data.chat_auto``)."""

Segment = tuple[str, bool]
