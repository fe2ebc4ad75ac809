"""Per-device memory estimate of a training step, from the config alone (no torch, no weights): part of every plan.

What one device holds at the peak of a step, in GiB (2^30 bytes), by piece:

  parameters   the policy's weights on this device: P x bytes per weight (model.dtype: 4 for float32, 2 for bf16 /
               fp16 or a *-true 16-bit precision); divided by the world size when sharded (FSDP2, ZeRO-3). Mixed
               precision (bf16-mixed / 16-mixed) with fp32 weights adds the 16-bit compute copy: autocast caches
               the cast of every weight it multiplies (2 bytes x P less the untied input embedding) under auto / DDP
               / ZeRO-1/2; FSDP2 holds its all-gathered 16-bit layers instead (two decoder layers, prefetch, and the
               root's embeddings and head; every layer with hardware.fsdp_reshard_after_forward=false); ZeRO-3
               two gathered layers. DeepSpeed keeps 16-bit weights (2 bytes) and its fp32 master copy in the
               optimizer. LoRA: the frozen base as above plus the adapters (fp32, PEFT's default). QLoRA: the
               decoder's linear layers in 4 bits (0.5 byte) plus their block constants (fp32 absmax per 64 weights
               = 0.0625 byte; double quantization: 8-bit absmax + fp32 per 256 blocks = 0.0159 byte), embeddings,
               head and norms in the compute dtype.
  gradients    one per trainable weight, in the weight's dtype (DeepSpeed mixed precision: 2 bytes); sharded by
               FSDP2 and ZeRO-2/3; DDP over several ranks adds its bucket copy (x2); FSDP2 with
               hardware.fsdp_accumulate_unsharded=true keeps the whole 16-bit gradients between micro-batches.
  optimizer    states per trainable weight: AdamW 2 (m, v) in the weight's dtype, SGD 1 with momentum (0 without),
               Adafactor's factored rows and columns (counted as 0); DeepSpeed mixed precision: fp32 master + states
               (4 + 4 x states bytes). Sharded by FSDP2 and every ZeRO stage; zero_offload_optimizer moves them to CPU.
  activations  saved for the backward, per token of the micro-batch (micro x sequences per example x max_seq_len:
               every row at full length, the worst case), for a Llama decoder layer with hidden size h, KV width kv
               (= h x num_kv_heads / num_heads), MLP width I:
                 6h x r        two RMSNorms: input, normalized, scaled (r: bytes of the residual stream = the weights')
                 (3h + 2kv) a  attention: rotated q, k; v; the SDPA output and its contiguous copy (o_proj's input)
                 4I x a        MLP: gate, up, SiLU(gate), SiLU(gate) x up (down_proj's input)
                 2h x a        mixed precision with fp32 weights: the 16-bit casts of the two norm outputs
                 (2 + heads) x 4   the norms' rsqrt, SDPA's log-sum-exp per head
                 heads x S x (4 + a)   attn_implementation=eager only: the fp32 softmax and its cast (S = max_seq_len)
               (a: bytes of the compute dtype, 2 under mixed or 16-bit precision, else 4), times num_layers, plus the
               final norm's 3h x r. With model.gradient_checkpointing only each layer's input (h x r) is kept, plus
               one layer's activations recomputed in its backward.
  logits       the head's output and the loss over it, per token: vocab x 12 bytes (the fp32 logits or their fp32
               copy, the log-softmax kept for the backward, and its gradient). With model.loss_chunk_size: two fp32
               [chunk, vocab] buffers and the gathered loss rows (hydralign/losses/chunked_ce.py).
  frozen       frozen models the method holds (hydralign.methods.specs held_models): DPO's reference copy has
               the policy's size and storage (sharded like it under FSDP2); it runs before the policy's forward and
               under no_grad, so its activations do not add to the peak. A distillation teacher's size is not in
               the config: it is not counted (said in the notes).

While lm-eval evaluates during training, rank 0 holds more: hydralign.plan.memory_evaluation adds it; a learner's
own vLLM engine (generation.backend=vllm, no generator devices): hydralign.plan.memory_colocated.

Not counted: the CUDA context and kernels (~0.5-1 GiB), allocator fragmentation, communication buffers, data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.plan.harness import harness_batch

GIB = float(2**30)
CHAR_VOCAB_BASE = 4 + 97  # the char tokenizer: <pad> <unk> <s> </s>, printable ASCII, newline, tab (+ markers)


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def kv(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    @property
    def layer_linear_params(self) -> int:
        h, kv, i = self.hidden, self.kv, self.intermediate
        return 2 * h * h + 2 * h * kv + 3 * h * i  # q, o; k, v; gate, up, down

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + 2 * self.hidden  # + two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden  # + final norm

    def lora_params(self, r: int, targets: Any) -> int:
        h, kv, i = self.hidden, self.kv, self.intermediate
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        names = list(shapes) if targets in (None, "all-linear") else [str(t) for t in targets]
        return self.layers * sum(r * sum(shapes[n]) for n in names if n in shapes)


@dataclass(frozen=True)
class MemoryInputs:
    """Everything the estimate reads, taken from the config (``memory_inputs``); overrides are field changes."""

    params: float  # P, the policy's parameters
    arch: Optional[Arch]  # None: a pretrained card without architecture fields (activations unknown)
    weight_bytes: int  # 4 or 2
    mixed: bool  # bf16-mixed / 16-mixed
    strategy: str  # auto | ddp | fsdp | deepspeed
    world: int
    zero_stage: Optional[int]
    offload_optimizer: bool
    offload_params: bool
    fsdp_reshard_after_forward: bool
    fsdp_accumulate_unsharded: bool
    peft: str  # none | lora | qlora
    lora_r: int
    lora_targets: Any
    optimizer: str
    momentum: float
    micro: int
    sequences_per_example: int
    seq_len: int
    checkpointing: bool
    eager_attention: bool
    loss_chunk: Optional[int]
    chunked_loss: bool  # the method supports model.loss_chunk_size (its spec's flag)
    held: tuple[str, ...]  # frozen models held in memory (the method spec's held_models)
    device_gib: Optional[float]
    eval_batch: Optional[int] = None  # lm-eval's batch when it runs during training (hydralign.plan.memory_evaluation)


@dataclass(frozen=True)
class MemoryEstimate:
    parameters_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: Optional[float]  # None: architecture unknown
    logits_gib: Optional[float]
    frozen_gib: float
    total_gib: float
    device_gib: Optional[float]
    fits: Optional[bool]  # None: no device memory known (CPU presets)
    trainable_params: float
    tokens_per_micro: int
    notes: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()  # overrides that lower the total, with the total each gives
    evaluation_gib: Optional[float] = None  # rank 0 while lm-eval runs (the total is the larger); None: no evaluation
    colocated_gib: Optional[float] = None  # a learner's vLLM engine awake (plan.memory_colocated); None: no engine


def char_vocab_size() -> int:
    from hydralign.data.templates import TEMPLATES

    return CHAR_VOCAB_BASE + len({m for t in TEMPLATES.values() for m in t.special_tokens})


def model_arch(cfg: Any) -> Optional[Arch]:
    """The Llama architecture of ``cfg.model``: source=config always (vocabulary: model.vocab_size, else the char
    tokenizer's size); a pretrained card only when it states model.vocab_size with the architecture fields."""
    vocab = setting(cfg, "model.vocab_size")
    if setting(cfg, "model.source") == "config":
        if vocab is None and setting(cfg, "model.tokenizer") == "char":
            vocab = char_vocab_size()
    if vocab is None:
        return None
    heads = int(setting(cfg, "model.num_heads"))
    return Arch(hidden=int(setting(cfg, "model.hidden_size")), layers=int(setting(cfg, "model.num_layers")),
                heads=heads, kv_heads=int(setting(cfg, "model.num_kv_heads") or heads),
                intermediate=int(setting(cfg, "model.intermediate_size")), vocab=int(vocab),
                tied=bool(setting(cfg, "model.tie_word_embeddings")))


def memory_inputs(cfg: Any, micro: int, sequences_per_example: int, held: tuple[str, ...], chunked_loss: bool,
                  seq_len: Optional[int] = None) -> Optional[MemoryInputs]:
    """``seq_len``: tokens per row when it is not ``data.max_seq_len`` (packed rows)."""
    arch = model_arch(cfg)
    if setting(cfg, "model.source") == "config" and arch is not None:
        params = float(arch.params)
    elif setting(cfg, "model.num_parameters") is not None:
        params = float(setting(cfg, "model.num_parameters"))
    elif arch is not None:
        params = float(arch.params)
    else:
        return None
    precision = str(setting(cfg, "hardware.precision"))
    dtype = str(setting(cfg, "model.dtype"))
    weight_bytes = 2 if dtype in ("bfloat16", "float16") or precision in ("bf16-true", "16-true") else 4
    peft = str(setting(cfg, "peft.name"))
    if peft != "none" and setting(cfg, "peft.load_in_4bit"):
        peft = "qlora"
    return MemoryInputs(
        params=params, arch=arch, weight_bytes=weight_bytes, mixed=precision.endswith("-mixed"),
        strategy=str(setting(cfg, "hardware.strategy")),
        world=int(setting(cfg, "hardware.nodes")) * int(setting(cfg, "hardware.devices_per_node"))
        - int(setting(cfg, "hardware.generator_devices") or 0),  # the learners: generators hold their own copy
        zero_stage=setting(cfg, "hardware.zero_stage"),
        offload_optimizer=bool(setting(cfg, "hardware.zero_offload_optimizer")),
        offload_params=bool(setting(cfg, "hardware.zero_offload_params")),
        fsdp_reshard_after_forward=bool(setting(cfg, "hardware.fsdp_reshard_after_forward")),
        fsdp_accumulate_unsharded=bool(setting(cfg, "hardware.fsdp_accumulate_unsharded")),
        peft=peft, lora_r=int(setting(cfg, "peft.r")), lora_targets=setting(cfg, "peft.target_modules"),
        optimizer=str(setting(cfg, "optimizer.name")), momentum=float(setting(cfg, "optimizer.momentum")),
        micro=micro, sequences_per_example=sequences_per_example, seq_len=int(seq_len if seq_len is not None else setting(cfg, "data.max_seq_len")),
        checkpointing=bool(setting(cfg, "model.gradient_checkpointing")),
        eager_attention=setting(cfg, "model.attn_implementation") == "eager",
        loss_chunk=setting(cfg, "model.loss_chunk_size"), chunked_loss=chunked_loss, held=tuple(held),
        device_gib=setting(cfg, "hardware.device_memory_gb"),
        eval_batch=None if setting(cfg, "eval.harness.every") == "none" else harness_batch(cfg),
    )


def _optimizer_states(name: str, momentum: float) -> int:
    if name in ("adamw", "adamw_fused"):
        return 2
    if name == "sgd":
        return 1 if momentum > 0 else 0
    return 0  # adafactor: factored second moments, rows + columns


def _activations_and_logits(m: MemoryInputs, tokens: int, compute_bytes: int
                            ) -> tuple[Optional[float], Optional[float]]:
    """Bytes of the activations kept for backward and of the logits (and the loss over them) per micro-batch;
    None without the architecture."""
    arch = m.arch
    if arch is None:
        return None, None
    h, kv, i, a, r = arch.hidden, arch.kv, arch.intermediate, compute_bytes, m.weight_bytes
    layer = 6 * h * r + (3 * h + 2 * kv + 4 * i) * a + (2 + arch.heads) * 4
    if m.mixed and r != a:
        layer += 2 * h * a
    if m.eager_attention:
        layer += arch.heads * m.seq_len * (4 + a)
    kept = arch.layers * h * r + layer if m.checkpointing else arch.layers * layer
    activations = float(tokens * (kept + 3 * h * r))
    if m.loss_chunk:
        chunk = min(int(m.loss_chunk), tokens)
        return activations, float(2 * chunk * arch.vocab * 4 + tokens * h * a)
    return activations, float(tokens * arch.vocab * 12)


def estimate_pieces(m: MemoryInputs) -> MemoryEstimate:
    """The estimate without suggestions (see the module docstring for every formula)."""
    notes: list[str] = []
    arch, world, P = m.arch, m.world, m.params
    ds = m.strategy == "deepspeed"
    stage = int(m.zero_stage or 0) if ds else 0
    fsdp = m.strategy == "fsdp"
    shard_params = world if (fsdp or stage == 3) else 1
    shard_grads = world if (fsdp or stage >= 2) else 1
    shard_opt = world if (fsdp or stage >= 1) else 1
    compute_bytes = 2 if (m.mixed or m.weight_bytes == 2) else 4
    layer_params = arch.layer_params if arch else P / 32  # unknown architecture: a 32-layer model's layer
    root_params = (arch.embedding_params * (1 if arch.tied else 2)) if arch else 0.0

    # parameters
    if m.peft == "none":
        trainable = P
        stored = 2 if (ds and m.mixed) else m.weight_bytes
        params = P * stored / shard_params
        if m.offload_params:
            params = 0.0
        if m.mixed and m.weight_bytes == 4 and not ds and not fsdp:
            cast = P - (arch.embedding_params if arch and not arch.tied else 0)
            params += 2 * cast  # autocast's cached 16-bit copies of the weights
    else:
        if arch is None:
            raise ValueError("peft needs the architecture")
        trainable = float(arch.lora_params(m.lora_r, m.lora_targets))
        if m.peft == "qlora":
            linear = arch.layers * arch.layer_linear_params
            base = linear * (0.5 + 0.0159) + max(P - linear, 0.0) * 2
        else:
            base = P * m.weight_bytes
        params = base / shard_params + trainable * 4 / shard_params
    if fsdp:
        gathered_layers = arch.layers if (arch and not m.fsdp_reshard_after_forward) else 2
        params += compute_bytes * (gathered_layers * layer_params + root_params)
    elif stage == 3:
        params += compute_bytes * 2 * layer_params
    train_bytes = 4 if m.peft != "none" else (2 if (ds and m.mixed) else m.weight_bytes)

    # gradients
    grads = trainable * train_bytes / shard_grads
    if m.strategy in ("ddp", "auto") and world > 1:
        grads *= 2  # DDP's gradient buckets
    if fsdp and m.fsdp_accumulate_unsharded:
        grads += trainable * compute_bytes

    # optimizer
    states = _optimizer_states(m.optimizer, m.momentum)
    per_param = (4 + 4 * states) if (ds and m.mixed) else states * train_bytes
    optimizer = trainable * per_param / shard_opt
    if m.offload_optimizer:
        notes.append(f"optimizer states in CPU memory: {optimizer / GIB:.2f} GiB per rank")
        optimizer = 0.0

    # activations and logits
    tokens = m.micro * m.sequences_per_example * m.seq_len
    activations, logits = _activations_and_logits(m, tokens, compute_bytes)
    if arch is None:
        notes.append("activations and logits unknown: the card gives no architecture (model.hidden_size, "
                     "num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size)")

    # frozen models: a copy of the policy's weights, stored (and sharded) as the policy's; no autocast cache
    # (their weights need no gradient) and no gathered copies kept past their forward
    frozen = 0.0
    for name in m.held:
        if name == "reference":
            frozen += P * (2 if (ds and m.mixed) else m.weight_bytes) / shard_params
        else:
            notes.append(f"{name}: its size is not in the config, not counted")

    total = params + grads + optimizer + (activations or 0.0) + (logits or 0.0) + frozen
    fits = None if m.device_gib is None else total / GIB <= float(m.device_gib)
    return MemoryEstimate(
        parameters_gib=params / GIB, gradients_gib=grads / GIB, optimizer_gib=optimizer / GIB,
        activations_gib=None if activations is None else activations / GIB,
        logits_gib=None if logits is None else logits / GIB, frozen_gib=frozen / GIB, total_gib=total / GIB,
        device_gib=None if m.device_gib is None else float(m.device_gib), fits=fits, trainable_params=trainable,
        tokens_per_micro=tokens, notes=tuple(notes))


def _candidates(m: MemoryInputs) -> list[tuple[str, MemoryInputs]]:
    """Overrides that lower memory and that the plan accepts for this config."""
    out: list[tuple[str, MemoryInputs]] = []
    if m.micro > 1:
        out.append(("batch.micro=1", dataclasses.replace(m, micro=1)))
    if not m.checkpointing and m.arch is not None:
        out.append(("model.gradient_checkpointing=true", dataclasses.replace(m, checkpointing=True)))
    chunk_ok = m.chunked_loss and not (m.strategy == "deepspeed" and m.zero_stage == 3)
    if chunk_ok and not m.loss_chunk and m.arch is not None:
        out.append(("model.loss_chunk_size=4096", dataclasses.replace(m, loss_chunk=4096)))
    if m.world > 1 and m.strategy in ("auto", "ddp"):
        out.append(("hardware.strategy=fsdp", dataclasses.replace(m, strategy="fsdp")))
    if m.strategy == "deepspeed":
        if (m.zero_stage or 0) < 3 and not m.held:
            out.append(("hardware.zero_stage=3", dataclasses.replace(m, zero_stage=3)))
        if not m.offload_optimizer:
            out.append(("hardware.zero_offload_optimizer=true", dataclasses.replace(m, offload_optimizer=True)))
    if m.strategy == "fsdp" and not m.fsdp_reshard_after_forward:
        out.append(("hardware.fsdp_reshard_after_forward=true",
                    dataclasses.replace(m, fsdp_reshard_after_forward=True)))
    if m.eval_batch is not None and m.eval_batch > 1:
        out.append(("eval.harness.batch_size=1", dataclasses.replace(m, eval_batch=1)))
    if m.peft == "none" and m.arch is not None:
        out.append(("peft=lora", dataclasses.replace(m, peft="lora", lora_r=64, lora_targets="all-linear")))
    return out


def estimate_memory(m: MemoryInputs, pieces: Callable[[MemoryInputs], MemoryEstimate] = estimate_pieces
                    ) -> MemoryEstimate:
    """The estimate (``pieces``: the training step's alone, or with evaluation counted); when it does not fit the
    device, the overrides that lower it, best first, with their totals."""
    est = pieces(m)
    if est.fits is not False:
        return est
    ranked = sorted(((pieces(alt).total_gib, key) for key, alt in _candidates(m)))
    suggestions = tuple(f"{key} ({total:.1f} GiB{', fits' if total <= est.device_gib else ''})"
                        for total, key in ranked if total < est.total_gib)
    return dataclasses.replace(est, suggestions=suggestions)


def format_memory(est: Optional[MemoryEstimate]) -> list[tuple[str, str]]:
    """Rows for ``plan.format_plan``."""
    if est is None:
        return [("memory per device", "unknown: the card gives neither model.num_parameters nor its architecture")]

    def gib(v: Optional[float]) -> str:
        if v is None:
            return "unknown"
        return f"{v:.2f} GiB" if v >= 1 else f"{v * 1024:.1f} MiB"

    parts = (f"parameters {gib(est.parameters_gib)}, gradients {gib(est.gradients_gib)}, optimizer "
             f"{gib(est.optimizer_gib)}, activations {gib(est.activations_gib)}, logits {gib(est.logits_gib)}, "
             f"frozen models {gib(est.frozen_gib)}")
    if est.device_gib is None:
        verdict = "no device memory in the preset (hardware.device_memory_gb)"
    elif est.fits:
        verdict = f"fits the device's {est.device_gib:g} GiB ({est.total_gib / est.device_gib:.0%})"
    else:
        verdict = f"WARNING: does not fit the device's {est.device_gib:g} GiB"
    rows = [("memory per device (est.)", f"{gib(est.total_gib)}, {verdict}"),
            ("  of which", f"{parts} ({est.tokens_per_micro} tokens per micro-batch, "
                           f"{est.trainable_params:.3g} trainable parameters)")]
    if est.evaluation_gib is not None:
        rows.append(("  evaluating (rank 0)", f"{gib(est.evaluation_gib)} while lm-eval runs (one batch beside the "
                                              "training state)"))
    if est.colocated_gib is not None:
        rows.append(("  sampling (vLLM)", f"{gib(est.colocated_gib)} with the learner's engine awake (its share "
                                          "generation.vllm_gpu_memory_utilization of the device beside training's)"))
    rows += [("  note", n) for n in est.notes]
    if est.fits is False:
        rows.append(("  to fit, try", "; ".join(est.suggestions) if est.suggestions
                     else "nothing single lowers it enough: more devices, a smaller model or shorter sequences"))
    return rows
