"""FSDP2 (``torch.distributed.fsdp.fully_shard``): mixed precision, the decoder layers it shards one by one, a
meta-device skeleton off rank 0 filled from rank 0's weights, and the whole weights gathered for export."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydralign.config.read import setting
from hydralign.errors import ConfigError


# --- FSDP2 -----------------------------------------------------------------------------------------
def mixed_precision_policy(precision: str):
    """FSDP2's policy for ``hardware.precision``: bf16/fp16 parameters in forward and backward (all-gathered
    at half the bytes), gradients reduced in fp32; the sharded master weights keep their own dtype."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision.startswith("bf16"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision.startswith("16"):
        return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model) -> list:
    """The model's repeated blocks, by the class names Hugging Face models declare in ``_no_split_modules``
    (``LlamaDecoderLayer``, ...), also when wrapped by PEFT."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"hardware.strategy=fsdp shards per decoder layer, but {type(model).__name__} names none "
                          "(no _no_split_modules); use hardware.strategy=ddp for this model")
    return layers


def meta_copy(model):
    """A copy of ``model`` whose parameters live on the meta device (no memory); buffers are copied."""
    import copy

    import torch

    memo = {id(p): torch.nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def shard_from_rank0(model, mesh, device, precision: str, reshard_after_forward: bool = True):
    """FSDP2-shard ``model`` over ``mesh`` and fill the shards with rank 0's weights; returns the sharded
    model. On rank 0 ``model`` holds the real weights (CPU); on every other rank it is an empty skeleton of
    the same structure (meta parameters, ``empty_policy``). ``reshard_after_forward=False`` keeps each layer's
    gathered parameters until its backward (``hardware.fsdp_reshard_after_forward``). Collective."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    rank0 = dist.get_rank() == 0
    full_state = model.state_dict() if rank0 else {}
    buffers = {name: buf for name, buf in model.named_buffers()} if rank0 else {}
    shell = meta_copy(model) if rank0 else model
    policy = mixed_precision_policy(precision)
    for layer in decoder_layers(shell):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(shell, mesh=mesh, mp_policy=policy)  # the root: embeddings, final norm, head (tied or not)
    shell.to_empty(device=device)
    set_model_state_dict(shell, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():  # buffers are not sharded; non-persistent ones (rotary inv_freq) are in no state dict
        for name, buf in shell.named_buffers():
            if rank0:
                buf.copy_(buffers[name])
            dist.broadcast(buf, src=0)
    return shell


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def empty_policy(cfg: Any, tokenizer: Any):
    """The policy's skeleton for ranks other than 0 under FSDP2: the same modules (PEFT included) with
    every tensor on the meta device; ``shard_from_rank0`` gives it rank 0's weights. A pretrained model
    is built from its config alone (no weights are read)."""
    import torch

    from hydralign.models import build_model
    from hydralign.models.peft import apply_peft

    mcfg = cfg.model
    with torch.device("meta"):
        if mcfg.source == "config":
            model = build_model(mcfg, tokenizer, cfg.seed, cfg.peft)
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            from hydralign.models.policy import DTYPES

            config = AutoConfig.from_pretrained(mcfg.name_or_path, revision=mcfg.revision,
                                                trust_remote_code=mcfg.trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": DTYPES[mcfg.dtype], "trust_remote_code": mcfg.trust_remote_code}
            if mcfg.attn_implementation:
                kwargs["attn_implementation"] = mcfg.attn_implementation
            model = AutoModelForCausalLM.from_config(config, **kwargs)
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            if mcfg.gradient_checkpointing:
                getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        return apply_peft(model, cfg.peft)


def gathered_policy(model, cfg: Any, tokenizer: Any):
    """The FSDP2-sharded policy's whole weights in a plain (unsharded) CPU model, for the Hugging Face
    export: on rank 0 that model, on every other rank None. Collective: every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = empty_policy(cfg, tokenizer)  # meta tensors; the gathered ones take their place
    plain.load_state_dict(full, assign=True)
    if hasattr(plain, "tie_weights"):  # assign gave tied parameters (embeddings and head) a copy each
        plain.tie_weights()
    # The state dict lacks non-persistent buffers (the rotary inv_freq): still on meta, they would fail any forward
    # of the copy ("Cannot copy out of meta tensor"). FSDP2 leaves buffers whole on every rank: take them as they are.
    held = dict(model.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta and name in held:
            owner, _, leaf = name.rpartition(".")
            target = plain.get_submodule(owner) if owner else plain
            persistent = leaf not in target._non_persistent_buffers_set
            target.register_buffer(leaf, held[name].detach().to("cpu").clone(), persistent=persistent)
    return plain


@contextmanager
def whole_weights(model, plan: Any, cfg: Any, tokenizer: Any) -> Iterator[Any]:
    """The policy with its whole weights, for the Hugging Face export on rank 0 (None on other ranks under
    FSDP2): FSDP2 gathers the shards into a plain CPU copy (``gathered_policy``); DeepSpeed ZeRO-3 gathers its
    partitions in place for the duration; otherwise every rank already holds them. Collective."""
    if plan.strategy == "fsdp":
        yield gathered_policy(model, cfg, tokenizer)
    elif plan.strategy == "deepspeed" and int(setting(cfg, "hardware.zero_stage") or 0) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
    else:
        yield model
