"""Models: the policy (``policy.py``: tokenizer, a tiny Llama from config or a pretrained model,
``init_from`` weights) and PEFT adapters (``peft.py``). Frozen models (DPO's reference, a
distillation teacher) belong here too."""

from hydralign.models.policy import (
    CHAR_SPECIALS,
    DTYPES,
    build_model,
    build_tokenizer,
    char_tokenizer,
    load_weights,
)

__all__ = ["CHAR_SPECIALS", "DTYPES", "build_model", "build_tokenizer", "char_tokenizer", "load_weights"]
