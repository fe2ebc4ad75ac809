"""Typed schemas for every config group. Pure: imports no torch.

Registered in Hydra's ConfigStore as ``config_schema`` (hydralign.config.store) and used as the first entry of
``conf/config.yaml``'s defaults, so a misspelled key or a wrong type fails at composition with
Hydra's own message (e.g. ``Key 'lrr' not in 'OptimizerConfig'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """What to train. ``source=config`` builds a Llama from the fields below (random init);
    ``source=pretrained`` loads ``name_or_path`` (hub id or local directory)."""

    name: str = MISSING
    source: str = "config"  # config | pretrained
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    trust_remote_code: bool = False  # executes code shipped with the weights: opt-in only
    dtype: str = "float32"  # weights dtype when loading: float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 (null = library default)
    gradient_checkpointing: bool = False  # lower activation memory, ~30% more compute
    tokenizer: Optional[str] = None  # "char" = local character tokenizer; null = same as name_or_path
    chat_template: str = "chatml"  # chatml | tulu | auto (the tokenizer's own template)
    num_parameters: Optional[float] = None  # printed in the plan (e.g. 8.0e9); the memory estimate's size for pretrained
    # The LM head and the loss over this many loss positions at a time, so [tokens, vocab] logits are never held
    # at once (hydralign/losses/chunked_ce.py; SFT and DPO). null: the model's own head and full logits.
    loss_chunk_size: Optional[int] = None
    # Architecture for source=config (LlamaConfig fields).
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: Optional[int] = None
    intermediate_size: int = 256
    max_position_embeddings: int = 256
    init_std: float = 0.02
    tie_word_embeddings: bool = False
    # Vocabulary size, read only by the plan's memory estimate (source=config: the tokenizer's size decides what
    # is built; pretrained cards state their config.json's value together with the fields above).
    vocab_size: Optional[int] = None


@dataclass
class MethodConfig:
    """The post-training method. Each method's own schema (``hydralign/methods/specs/<name>.py``)
    extends this one and is the first default of ``conf/method/<name>.yaml``, so a key the
    chosen method does not have fails at composition."""

    name: str = MISSING  # one of hydralign.methods.specs.METHODS


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adamw_fused | sgd | adafactor (hydralign/optim/optimizers.py)
    lr: float = "${lr}"  # type: ignore[assignment]  # the top-level lr, so sweeps override one key
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    eps: float = 1e-8  # adamw
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # not applied to biases and norm weights
    grad_clip: Optional[float] = 1.0  # max global grad norm; null disables clipping


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | linear | cosine | multistep
    warmup_ratio: Optional[float] = None  # fraction of total steps; give this or warmup_steps
    warmup_steps: Optional[int] = None
    min_lr_ratio: float = 0.0  # cosine/linear floor as a fraction of the peak
    # multistep (DeepSeek LLM): after milestones[i] of training, lr = peak * factors[i]
    milestones: list[float] = field(default_factory=lambda: [0.8, 0.9])
    factors: list[float] = field(default_factory=lambda: [0.316, 0.1])


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = "cpu"  # cpu | gpu
    gpu: Optional[str] = None  # e.g. A100-80GB, informational and checked against the machine
    nodes: int = 1
    devices_per_node: int = 1
    # Online RL: how many of the nodes x devices_per_node devices only generate (Tulu 3: 7 learners + 1 vLLM
    # generator); the others are the learners (world_size). 0: the learners generate between their steps; N >= 1:
    # N generator processes beside the learners sample rollouts and receive the learners' weights
    # (method.weight_sync_steps), method.max_staleness rollout batches ahead (hydralign/rollout_workers/).
    generator_devices: int = 0
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true
    device_memory_gb: Optional[float] = None  # memory of one device (GPU presets), for the plan's memory estimate
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed
    zero_stage: Optional[int] = None  # deepspeed ZeRO stage (1, 2, 3)
    # DeepSpeed: keep optimizer states (any stage) / parameters (ZeRO-3 only) in CPU memory: far less GPU
    # memory, slower steps.
    zero_offload_optimizer: bool = False
    zero_offload_params: bool = False
    # FSDP2 trade-offs of memory for communication (defaults: least memory).
    # false: keep each decoder layer's gathered parameters from forward until its backward (one all-gather
    # per layer and micro-batch instead of two; ZeRO-2-like memory).
    fsdp_reshard_after_forward: bool = True
    # true: skip the gradient reduce-scatter on all but the last micro-batch of a step, as DDP skips its
    # all-reduce; every rank then keeps whole (unsharded) gradients between micro-batches. With
    # fsdp_reshard_after_forward=false the weights also stay gathered over the step's micro-batches (one
    # all-gather and one reduce-scatter per step, DDP's all-reduce in two halves).
    fsdp_accumulate_unsharded: bool = False
    process_backend: Optional[str] = None  # nccl | gloo (null = accelerator default)
    # A collective that waits longer than this fails the job (the process group's timeout; null = Lightning's
    # 30 minutes). Raise it when rank 0 works alone for long while the others wait (loading a large model).
    dist_timeout_min: Optional[int] = None
    # Set into the environment of every rank before its process group starts (the NCCL settings of the GPU
    # presets); a value given here replaces an inherited one. New keys: +hardware.env.NAME=value.
    env: dict[str, str] = field(default_factory=dict)
    # SLURM, with hydra/launcher=submitit_slurm (conf/hydra/launcher/submitit_slurm.yaml): the job asks for
    # `nodes` nodes with `devices_per_node` tasks on each (one per device), and for:
    slurm_gpus_per_node: Optional[int] = None  # GPUs on each node (GPU presets: ${.devices_per_node})
    slurm_cpus_per_task: Optional[int] = None  # CPU cores per task (null: the cluster's default)
    slurm_time_min: int = 60  # the job's time limit (sbatch --time), minutes


@dataclass
class BatchConfig:
    """TRL's words: micro = per device per forward; effective = per optimizer step over all devices."""

    effective: int = 32
    micro: Optional[int] = None  # null: the largest size <= max_micro that divides effective / world_size
    max_micro: int = 32  # upper bound for a derived micro batch (memory per device)
    grad_accum: Optional[int] = None  # derived; give it only to assert what you expect


@dataclass
class ArithmeticConfig:
    """The embedded synthetic task: ``a+b=`` answered with the sum's digits reversed (data/arithmetic.py)."""

    num_train: int = 20000
    num_val: int = 500
    max_digits: int = 3
    pad_operands: bool = True  # "700+240=": digits at fixed positions (much faster to learn)
    reverse_operands: bool = True  # operands least significant digit first, like the answer
    # share of train pairs whose operands are 1..max_digits digits long equally often (the rest: uniform
    # values, 90% max_digits long); val is always uniform
    balanced_fraction: float = 0.5
    system_prompt: Optional[str] = None
    # The split's seed (null: the run's seed). Pin it when runs that start from another run (init_from,
    # teacher_from) vary their seed: their val set then stays the other run's, never its training data.
    seed: Optional[int] = None


@dataclass
class MixtureSourceConfig:
    """One source of ``data.mixture`` (open-instruct's ``dataset_mixer_list`` entry: a source and a fraction or count)."""

    source: str = MISSING  # a local file (.jsonl / .json / .parquet) or a hub data set id
    take: float = 1.0  # a fraction in (0, 1] of the source's records, or a whole count > 1 (open-instruct's rule)
    repeat: bool = False  # a count above the source's size repeats it (whole copies, then a sample); else refused
    name: Optional[str] = None  # the name in logs (data/mix/<name>/examples); null: from the source
    split: str = "train"  # hub sets: the split read
    hub_config: Optional[str] = None
    revision: Optional[str] = None  # hub sets: a commit or tag, part of the tokenized cache's key
    num_examples: Optional[int] = None  # the source's known size: dry_run counts a fraction's examples from it
    # This source's field names (null: the data.*_field of the same name)
    messages_field: Optional[str] = None
    prompt_field: Optional[str] = None
    completion_field: Optional[str] = None
    chosen_field: Optional[str] = None
    rejected_field: Optional[str] = None
    label_field: Optional[str] = None


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "arithmetic"  # arithmetic | files | hub
    train_files: list[str] = field(default_factory=list)  # .jsonl / .json / .parquet
    val_files: list[str] = field(default_factory=list)
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_revision: Optional[str] = None  # a commit or tag of the hub set (part of the tokenized cache's key)
    train_split: str = "train"
    val_split: Optional[str] = None
    val_fraction: float = 0.0  # carve a validation split from train when none is given
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    chosen_field: str = "chosen"  # preference pairs: prompt_field + these two (strings or message lists)
    rejected_field: str = "rejected"
    label_field: str = "label"  # unpaired data (KTO): prompt_field + completion_field + this (true = desirable)
    max_seq_len: int = 128
    overlong: str = "truncate"  # truncate | drop
    # none: one padded row per example | padding_free: a micro-batch's examples in one row, attention kept
    # inside each | packed: rows of <= max_tokens_per_micro tokens (best-fit decreasing); batch sizes count rows
    packing: str = "none"
    max_tokens_per_micro: Optional[int] = None  # packed: tokens per row (>= max_seq_len; a pair needs 2x)
    num_examples: Optional[int] = None  # known size of a hub set, lets dry_run count steps
    num_workers: int = 0
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    # source=mixture: the train data, source by source, each a fraction or a count (hydralign/data/mixture.py)
    mixture: list[MixtureSourceConfig] = field(default_factory=list)
    # The data's seed: the held-out split, the mixture's sample, KTO's twins (null: the run's seed). Pin it so the
    # jobs of a seed sweep share one tokenized cache.
    seed: Optional[int] = None
    # Read, convert and tokenize once into <cache_dir>/<key>/ (Arrow, memory-mapped), shared by every job and rank
    # whose data tokenizes the same (hydralign/data/cache.py); false: tokenize in this job's memory
    cache: bool = True
    cache_dir: Optional[str] = None  # null: <cwd>/outputs/cache/tokenized


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning: none | lora | qlora (4-bit base via bitsandbytes, CUDA only)."""

    name: str = "none"
    r: int = 64  # adapter rank: higher = more trainable parameters and memory
    alpha: float = 16.0  # scaling = alpha / r
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear" (Firefly: every Linear but the head) or a list of names
    bias: str = "none"  # none | all | lora_only
    load_in_4bit: bool = False  # qlora: quantize the frozen base to 4 bits
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/param saved)
    compute_dtype: str = "float16"  # dtype of the 4-bit matmuls: float16 (V100) | bfloat16
    merge_on_export: bool = True  # hf_model/ holds the merged full model; adapter/ the adapters alone


@dataclass
class LoggerConfig:
    name: str = "mlflow"  # mlflow | none
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/outputs/mlflow.db
    experiment_name: str = "hydralign"
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class HarnessConfig:
    """Downstream evaluation through EleutherAI's lm-evaluation-harness (hydralign/harness/): the in-memory
    policy through lm-eval's own Hugging Face wrapper, metrics logged as ``eval/<task>/<metric>[_<filter>]``."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task or group names; hydralign_arithmetic ships with us
    include_path: list[str] = field(default_factory=list)  # folders of task YAMLs (local data), besides our own
    num_fewshot: Optional[int] = None  # null: each task's own
    limit: Optional[float] = None  # examples per task (>= 1) or a fraction of them (< 1); null: all
    batch_size: Optional[int] = None  # examples per forward; null: eval.batch_size (the validation's, already held)
    apply_chat_template: Optional[bool] = None  # null: when the tokenizer has a chat template
    gen_kwargs: Any = None  # a mapping of generation settings over every generate_until task's own (null: none)
    every: str = "none"  # none | end | checkpoint (each saved checkpoint) | validation (each validation)


@dataclass
class EvalConfig:
    every_n_steps: int = 100  # optimizer steps between validations
    at_start: bool = True  # score the untrained model first (step 0 of every curve)
    num_generate: int = 256  # validation prompts answered by greedy generation
    max_new_tokens: int = 16
    batch_size: int = 64
    prompt_format: str = "zero_shot"  # zero_shot | few_shot (logged: scores move with it)
    num_fewshot: int = 0
    repetition_min_repeats: int = 3  # a non-stopping generation ending in a span repeated this often
    repetition_max_period: int = 32
    harness: HarnessConfig = field(default_factory=HarnessConfig)


@dataclass
class CheckpointConfig:
    monitor: str = "val/exact_match"
    mode: str = "max"  # max | min
    # Full training state (resume=auto continues the newest): checkpoints/stepNNNNNN.ckpt every_n_steps
    # (null: at each validation) and every_n_minutes (null: none; DeepSeek lost at most 5 minutes), the
    # newest keep_last_k kept, last.ckpt links to the newest.
    every_n_steps: Optional[int] = None
    # Online methods (GRPO): every N episodes (samples), converted by the plan to whole optimizer steps and
    # validated there, so <run>:best can pick among them (null: none; not with every_n_steps).
    every_n_episodes: Optional[int] = None
    every_n_minutes: Optional[float] = None
    keep_last_k: int = 10
    keep_best_k: int = 1  # best-stepNNNNNN.ckpt: the top K by monitor (what <run>:best can pick from)
    save_last: bool = True  # false: no rolling checkpoints unless every_n_steps / every_n_minutes ask
    export_hf: bool = True  # save_pretrained of the final model into <run_dir>/hf_model


@dataclass
class GenerationConfig:
    """How online RL samples its rollouts: in generator processes (hardware.generator_devices >= 1) or in the learners
    (0; with vllm each learner's own colocated engine)."""

    backend: str = "hf"  # hf: Hugging Face generate (CPU and GPU) | vllm: vLLM's engine (CUDA, `pip install vllm`)
    vllm_gpu_memory_utilization: float = 0.5  # vllm: the share of the GPU (generator's, or learner's) its engine takes
    vllm_dtype: str = "auto"  # vllm: the engine's weight dtype (auto: the model config's)
    vllm_sleep: bool = True  # vllm in the learners: the engine sleeps while they train (its memory back to training)


@dataclass
class Config:
    lr: float = 1e-3
    seed: int = 0
    dry_run: bool = False
    init_from: Optional[str] = None  # HF directory or .ckpt whose weights start the run
    resume: Optional[str] = None  # a run directory or checkpoint to continue; "auto" = this run_dir's newest, if any
    run_dir: Optional[str] = None  # null: Hydra's output dir
    # What a sweep's job returns: a metric name, or a list of names for a multi-objective Optuna study.
    optimized_metric: Any = "val/exact_match"
    # Named paths for interpolation, so a sweep file can say where its runs start (sweeps/
    # sft_ckpt_early_vs_final.yaml: refs.sft=<run dir>, then init_from=${refs.sft}:${refs.start}).
    refs: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Passed through to lightning.Trainer. trainer.max_steps or trainer.max_epochs sets the length
    # of training; the plan turns epochs into optimizer steps.
    trainer: dict[str, Any] = field(default_factory=dict)
