"""Tokenizer and model: a tiny Llama built from config (random init, local character tokenizer) or
a pretrained model from a hub id or local directory. Loading is safe by default: safetensors first,
``trust_remote_code`` only when the config says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from hydralign.data.chat import template_for
from hydralign.data.templates import TEMPLATES, ChatTemplate
from hydralign.errors import ConfigError
from hydralign.models.peft import quantization_kwargs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHAR_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def char_tokenizer():
    """Printable ASCII plus newline/tab, one token per character, and every template's markers as
    single special tokens. Built in memory; saved with the model on export."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    markers = sorted({m for t in TEMPLATES.values() for m in t.special_tokens})
    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(list(CHAR_SPECIALS) + markers + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", additional_special_tokens=markers)


def build_tokenizer(mcfg: Any, template: Optional[ChatTemplate]):
    """The tokenizer, with the template's markers as special tokens and its Jinja saved with it;
    ``template=None`` (``model.chat_template=auto``) keeps the tokenizer's own chat template."""
    if mcfg.tokenizer == "char":
        tok = char_tokenizer()
    else:
        from transformers import AutoTokenizer

        source = mcfg.tokenizer or mcfg.name_or_path
        tok = AutoTokenizer.from_pretrained(source, revision=mcfg.revision,
                                            trust_remote_code=mcfg.trust_remote_code)
        missing = [m for m in (template.special_tokens if template else ()) if m not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if template is not None:
        tok.chat_template = template.jinja_for(tok)
    return tok


def tokenizer_and_template(mcfg: Any) -> tuple[Any, ChatTemplate]:
    """The run's tokenizer and chat template from ``cfg.model``: ``chat_template=auto`` reads the template from
    the tokenizer; a named one (chatml, tulu) adds its markers to the tokenizer."""
    if mcfg.chat_template == "auto":
        tokenizer = build_tokenizer(mcfg, None)
        return tokenizer, template_for("auto", tokenizer)
    template = template_for(mcfg.chat_template)
    return build_tokenizer(mcfg, template), template


def build_model(mcfg: Any, tokenizer, seed: int, pcfg: Any = None) -> torch.nn.Module:
    """The policy's base model, before PEFT (``models.peft.apply_peft`` wraps it afterwards).
    ``pcfg`` is ``cfg.peft``: with ``peft.load_in_4bit`` (qlora) a pretrained base is loaded in 4 bits."""
    load_in_4bit = bool(getattr(pcfg, "load_in_4bit", False))
    if mcfg.source == "config":
        if load_in_4bit:
            raise ConfigError(f"peft.load_in_4bit quantizes pretrained weights, but model={mcfg.name} is built "
                              "from config with random init (model.source=config); use peft=lora, or a "
                              "pretrained model")
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=mcfg.hidden_size, num_hidden_layers=mcfg.num_layers,
            num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads or mcfg.num_heads,
            intermediate_size=mcfg.intermediate_size, max_position_embeddings=mcfg.max_position_embeddings,
            initializer_range=mcfg.init_std, tie_word_embeddings=mcfg.tie_word_embeddings,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if mcfg.attn_implementation:
            config._attn_implementation = mcfg.attn_implementation
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.to(DTYPES[mcfg.dtype])
    elif mcfg.source == "pretrained":
        from transformers import AutoModelForCausalLM

        if not mcfg.name_or_path:
            raise ConfigError(f"model={mcfg.name} has source=pretrained but no model.name_or_path")
        kwargs = dict(revision=mcfg.revision, trust_remote_code=mcfg.trust_remote_code,
                      dtype=DTYPES[mcfg.dtype])
        if mcfg.attn_implementation:
            kwargs["attn_implementation"] = mcfg.attn_implementation
        kwargs.update(quantization_kwargs(pcfg))
        model = AutoModelForCausalLM.from_pretrained(mcfg.name_or_path, **kwargs)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    else:
        raise ConfigError(f"model.source={mcfg.source} must be config or pretrained")
    if mcfg.gradient_checkpointing:  # transformers 5 renames gradient_checkpointing_enable
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


# Architecture fields that change what the weights mean without changing their shapes (so loading would
# "succeed"): the config key that sets each on our side, for the message.
SAME_SHAPE_FIELDS = {"num_attention_heads": "model.num_heads", "num_key_value_heads": "model.num_kv_heads",
                     "head_dim": None, "hidden_act": None, "rms_norm_eps": None, "rope_theta": None,
                     "rope_parameters": None}


def check_architecture(model: torch.nn.Module, hf_dir: Path, source: str) -> None:
    """Refuses weights saved for another head split, activation, norm epsilon or RoPE: e.g. 4 heads of 32 and 8
    heads of 16 have the same tensors, and loading one into the other would run without error but compute
    something else."""
    import json

    saved_file = Path(hf_dir) / "config.json"
    if not saved_file.is_file():
        return
    saved, ours = json.loads(saved_file.read_text()), model.config.to_dict()
    for name, key in SAME_SHAPE_FIELDS.items():
        if name in saved and name in ours and saved[name] is not None and saved[name] != ours[name]:
            fix = f"set {key}={saved[name]}" if key else f"match the source's {name}"
            raise ConfigError(f"init_from={source} was saved with {name}={saved[name]}, this model has "
                              f"{ours[name]}: the weights would load but mean something else; {fix}")


def load_weights(model: torch.nn.Module, source: str) -> None:
    """``init_from``: an HF directory (safetensors), a hydralign run directory (its exported model, or the
    checkpoint a selector such as ``:best`` picks) or a Lightning checkpoint (weights_only), as
    ``hydralign.checkpoints.references.resolve_weights`` finds it."""
    from hydralign.checkpoints.references import resolve_weights

    path = resolve_weights(source)
    if path.is_dir():
        from safetensors.torch import load_file

        check_architecture(model, path, source)

        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(str(f)))
    else:
        from hydralign.checkpoints.export import checkpoint_weights

        state = checkpoint_weights(path)  # a .ckpt file, or an FSDP2 checkpoint's shards
        if any(".lora_" in k for k in state):  # a PEFT run's checkpoint: its exported hf_model/ is merged
            raise ConfigError(f"init_from={source} holds LoRA adapter weights; start from that run's "
                              "directory (its merged hf_model/) instead")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"init_from={source} does not match the model: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
