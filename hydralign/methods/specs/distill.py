"""Knowledge distillation from a frozen teacher into the policy, the student (``method=distill``; module
hydralign/methods/distill.py, losses hydralign/losses/distill.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.config.schema import MethodConfig
from hydralign.errors import ConfigError
from hydralign.methods.spec import MethodSpec


@dataclass
class DistillConfig(MethodConfig):
    """Knowledge distillation from a frozen teacher into the policy, the student (hydralign/methods/distill.py,
    losses in hydralign/losses/distill.py)."""

    # The teacher: a checkpoint reference (hydralign.checkpoints.references): <run dir>[:best|:last|:step=N|:epoch=N],
    # runs:/<mlflow run id>[:selector] or a Hugging Face directory. Its tokenizer must be the student's.
    teacher_from: Optional[str] = None
    # forward_kl | reverse_kl | jsd (token-level, teacher forward each step) | seqkd (SFT on the teacher's
    # greedy answers, generated once and cached) | minillm (on-policy reverse KL by policy gradient)
    loss: str = "forward_kl"
    temperature: float = 1.0  # forward_kl / reverse_kl / jsd: softmax temperature; the loss is scaled by T^2
    jsd_beta: float = 0.5  # jsd: 0 = forward KL, 1 = reverse KL (TRL's GKD convention)
    sft_weight: float = 0.0  # adds this x the student's NLL on the data (MiniLLM's pretraining-loss term)
    teacher_mix: float = 0.0  # minillm: share of the teacher in the sampling distribution (MiniLLM: 0.2)
    max_new_tokens: Optional[int] = None  # seqkd / minillm answers (null: eval.max_new_tokens)
    cache_dir: Optional[str] = None  # seqkd answers (null: <cwd>/outputs/cache/teacher_generations)
    completion_only: bool = True  # losses on completion tokens only (seqkd / minillm need the prompts)


LOSSES = ("forward_kl", "reverse_kl", "jsd", "seqkd", "minillm")
GENERATING = ("seqkd", "minillm")  # losses on generated answers to the data's prompts


def _m(cfg: Any, key: str) -> Any:
    return setting(cfg, f"method.{key}", DistillConfig)


def _frozen(cfg: Any) -> tuple[str, ...]:
    ref, loss = _m(cfg, "teacher_from"), _m(cfg, "loss")
    if loss == "seqkd":
        return (f"teacher {ref}: greedy answers to every train and val prompt, generated once and cached on disk "
                "(no teacher in memory while training)",)
    if loss == "minillm":
        return (f"teacher {ref}: frozen, scores the student's samples (teacher_mix {_m(cfg, 'teacher_mix')})",)
    return (f"teacher {ref}: frozen, one forward per micro-batch",)


def _check_loss(cfg: Any, loss: str) -> None:
    temperature = float(_m(cfg, "temperature"))
    if not temperature > 0:
        raise ConfigError(f"method.temperature={temperature} must be > 0 (1 = the models' own distributions)")
    if loss in GENERATING and temperature != 1.0:
        raise ConfigError(f"method.temperature={temperature} applies to forward_kl, reverse_kl and jsd; method.loss="
                          f"{loss} learns from answers at temperature 1: set method.temperature=1.0")
    beta = float(_m(cfg, "jsd_beta"))
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"method.jsd_beta={beta} must be in [0, 1] (0 = forward KL, 1 = reverse KL)")
    weight = float(_m(cfg, "sft_weight"))
    if weight < 0:
        raise ConfigError(f"method.sft_weight={weight} must be >= 0")


def _check(cfg: Any) -> None:
    loss = _m(cfg, "loss")
    if loss not in LOSSES:
        raise ConfigError(f"method.loss={loss} is unknown; choose from {', '.join(LOSSES)}")
    if not _m(cfg, "teacher_from"):
        raise ConfigError("method=distill needs method.teacher_from=<teacher>: a run folder (with :best, :last or "
                          ":step=N), runs:/<mlflow run id> or a Hugging Face directory")
    _check_loss(cfg, loss)
    mix = float(_m(cfg, "teacher_mix"))
    if not 0.0 <= mix < 1.0:
        raise ConfigError(f"method.teacher_mix={mix} must be in [0, 1) (MiniLLM uses 0.2)")
    if mix > 0 and loss != "minillm":
        raise ConfigError(f"method.teacher_mix={mix} is MiniLLM's teacher-mixed sampling; with method.loss={loss} "
                          "set method.teacher_mix=0.0, or method.loss=minillm")
    new_tokens = _m(cfg, "max_new_tokens")
    if new_tokens is not None and int(new_tokens) < 1:
        raise ConfigError(f"method.max_new_tokens={new_tokens} must be >= 1, or null for eval.max_new_tokens")
    if loss in GENERATING and not _m(cfg, "completion_only"):
        raise ConfigError(f"method.loss={loss} answers the data's prompts, which method.completion_only=false "
                          "erases (every token is a target): set method.completion_only=true")


SPEC = MethodSpec("distill", DistillConfig, data_kind="sft", unit="tokens",
                  module="hydralign.methods.distill:DistillModule", order=3, frozen=_frozen,
                  held=lambda cfg: () if _m(cfg, "loss") == "seqkd" else ("teacher",), check=_check,
                  zero3_fix="method.loss=seqkd (the teacher's answers generated once and cached; no teacher held "
                            "while training)",
                  report_metrics=("distill/nll", "val/distill/nll", "val/loss"))
