"""What a learner's own vLLM engine adds to the plan's memory estimate (``generation.backend=vllm`` with
``hardware.generator_devices=0``: ``rollout_workers.colocated``). Pure: no torch.

vLLM takes ``generation.vllm_gpu_memory_utilization`` (u) of the whole device (D, ``hardware.device_memory_gb``) for
its weights, activations and KV cache, whatever the learner holds beside it. One learner's peak, in GiB:

  sampling     generation.vllm_sleep=true (the engine sleeps while the learner trains): while it is awake, the
               training state that stays resident (parameters, gradients, optimizer states, frozen models, as the
               training estimate counts them; the step's activations and logits are freed) + u x D.
  held         generation.vllm_sleep=false: the engine's share is held through training too: the training peak
               (the step's, or lm-eval's where it is larger) + u x D.

The estimate's total is the largest of the training step's, evaluation's and this one; its verdict and suggestions
use it. The engine must also hold the whole policy in its own dtype (``generation.vllm_dtype``: float32 4 bytes;
auto and the 16-bit ones 2, since vLLM's auto casts a float32 config to 16 bits) within u x D, with room left for
its KV cache. Where the total does not fit, the suggestion names the largest u (to 0.01) that fits both, or a note
says none does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.plan.memory import GIB, MemoryEstimate, MemoryInputs, estimate_memory
from hydralign.plan.memory_evaluation import estimate_with_evaluation


@dataclass(frozen=True)
class ColocatedInputs:
    utilization: float  # u, generation.vllm_gpu_memory_utilization
    sleep: bool  # generation.vllm_sleep
    engine_bytes: int  # bytes per weight in the engine


def colocated_inputs(cfg: Any, rollout: Any) -> Optional[ColocatedInputs]:
    """The colocated engine's settings, or None where the learners have none (``rollout``: the plan's)."""
    if rollout is None or rollout.backend != "vllm" or rollout.generator_devices:
        return None
    dtype = str(setting(cfg, "generation.vllm_dtype"))
    return ColocatedInputs(utilization=float(setting(cfg, "generation.vllm_gpu_memory_utilization")),
                           sleep=bool(setting(cfg, "generation.vllm_sleep")),
                           engine_bytes=4 if dtype in ("float32", "float") else 2)


def _resident_gib(est: MemoryEstimate) -> float:
    return est.parameters_gib + est.gradients_gib + est.optimizer_gib + est.frozen_gib


def _beside_engine_gib(c: ColocatedInputs, training: MemoryEstimate) -> float:
    """What the learner holds while its engine is awake: the resident training state (vllm_sleep), else its peak."""
    return _resident_gib(training) if c.sleep else training.total_gib


def _engine_weights_gib(m: MemoryInputs, c: ColocatedInputs) -> float:
    return m.params * c.engine_bytes / GIB


def with_colocated(m: MemoryInputs, c: ColocatedInputs) -> MemoryEstimate:
    """``estimate_with_evaluation`` plus the colocated engine (``colocated_gib``: the peak with the engine awake);
    the total is the largest. For ``plan.memory.estimate_memory(m, pieces=...)``."""
    est = estimate_with_evaluation(m)
    if est.device_gib is None:
        return dataclasses.replace(est, notes=est.notes + (
            "colocated vLLM: not counted (no hardware.device_memory_gb: its share of the device is unknown)",))
    share = c.utilization * est.device_gib
    peak, weights = _beside_engine_gib(c, est) + share, _engine_weights_gib(m, c)
    notes = est.notes
    if weights >= share:
        notes += (f"colocated vLLM: the policy in the engine's dtype ({weights:.2f} GiB) does not fit its share "
                  f"(generation.vllm_gpu_memory_utilization {c.utilization:g} x {est.device_gib:g} GiB = "
                  f"{share:.2f} GiB), nor would its KV cache",)
    total = max(est.total_gib, peak)
    return dataclasses.replace(est, colocated_gib=peak, total_gib=total,
                               fits=total <= est.device_gib and weights < share, notes=notes)


def fitting_utilization(m: MemoryInputs, c: ColocatedInputs) -> tuple[Optional[float], str]:
    """The largest u (to 0.01) at which the total fits and the engine holds the policy with room to spare, and
    why there is none (empty where there is one)."""
    training = estimate_with_evaluation(m)
    device = float(training.device_gib)
    weights = _engine_weights_gib(m, c)
    if training.total_gib > device:
        return None, f"the training alone needs {training.total_gib:.1f} GiB of the device's {device:g} GiB"
    left = device - _beside_engine_gib(c, training)
    best = math.floor(left / device * 100 + 1e-9) / 100
    if best * device <= weights:
        return None, (f"the {left:.1f} GiB training leaves on the device do not hold the policy in the engine's "
                      f"dtype ({weights:.2f} GiB) with room for its KV cache")
    return best, ""


def estimate_colocated(m: MemoryInputs, c: ColocatedInputs) -> MemoryEstimate:
    """The estimate with the colocated engine counted (``with_colocated``); where it does not fit, the
    ``generation.vllm_gpu_memory_utilization`` that would, first among the suggestions, or a note that none does."""
    est = estimate_memory(m, pieces=lambda alt: with_colocated(alt, c))
    if est.fits is not False:
        return est
    # peft is refused with the learners' engines (plan.rollout); where the share cannot hold the policy, only u helps
    held = _engine_weights_gib(m, c) < c.utilization * float(est.device_gib)
    others = tuple(s for s in est.suggestions if held and not s.startswith("peft="))
    best, why = fitting_utilization(m, c)
    if best is None:
        return dataclasses.replace(est, suggestions=others, notes=est.notes + (
            f"colocated vLLM: no generation.vllm_gpu_memory_utilization fits: {why}",))
    total = with_colocated(m, dataclasses.replace(c, utilization=best)).total_gib
    return dataclasses.replace(est, suggestions=(
        f"generation.vllm_gpu_memory_utilization={best:g} ({total:.1f} GiB, fits)",) + others)
