"""The build stage: the run's components in the order each needs the last. The tokenizer first (a method may refuse
a teacher with another one before anything loads), then the data (its count refines the plan: ``plan.refine``), the
checkpoint callbacks and the Trainer (its strategy decides how the policy is built), the policy (PEFT applied; under
FSDP2 an empty skeleton off rank 0, filled from rank 0's weights), the method's frozen models, and the module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
from omegaconf import DictConfig, OmegaConf

from hydralign.checkpoints.saving import RollingCheckpoints, checkpoint_callbacks
from hydralign.data.module import PostTrainingData
from hydralign.distributed.preemption import LISTENER
from hydralign.harness.callback import harness_callbacks
from hydralign.methods.specs import get_method
from hydralign.models import build_model, load_weights, tokenizer_and_template
from hydralign.models.peft import apply_peft
from hydralign.plan.core import Plan, refine
from hydralign.run.callbacks import StartupTimer, StepSeeds, TokensSeen
from hydralign.run.preemption import StopOnSignal
from hydralign.run.reference_logps import precomputed_reference
from hydralign.run.references import References, rank_zero
from hydralign.run.trainer import build_trainer
from hydralign.sweep.pruning import pruning_callback
from hydralign.tracking.recorder import RunRecorder


@dataclass
class Built:
    plan: Plan  # refined with the loaded data's count
    tokenizer: Any
    data: PostTrainingData
    model: Any  # the policy (PEFT-wrapped where asked)
    module: Any  # the method's LightningModule
    trainer: Any
    best: Any  # the checkpoint callback that keeps the best validated checkpoint
    checkpoints: list  # every checkpoint callback (rolling and best)
    pruning: Optional[Any]  # a job of an Optuna sweep: its pruning callback
    stop_ids: list[int]
    reference_report: Optional[dict]  # precomputed reference log-probs: where from, how long


def build(cfg: DictConfig, config_plan: Plan, refs: References, recorder: RunRecorder, callbacks: list,
          started: float) -> Built:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = get_method(cfg.method.name)
    tokenizer, template = tokenizer_and_template(cfg.model)
    module_cls = spec.module_class()
    module_cls.check_before_models(cfg, tokenizer)  # e.g. a teacher with another tokenizer: refused before loading
    data = PostTrainingData(cfg, tokenizer, template, kind=spec.data_kind, unit=spec.unit)
    data.load()
    module_cls.check_data(cfg, data)  # e.g. a routed source no record has: refused before any model loads
    plan = refine(config_plan, cfg, data.num_train_items)
    data.serve(plan)

    best, ckpts = checkpoint_callbacks(cfg.checkpoint, refs.run_dir / "checkpoints", plan.eval_every_n_steps,
                                       plan.steps_per_epoch, plan.checkpoint_every_n_steps)
    pruning = pruning_callback(cfg.optimized_metric)  # a job of an Optuna sweep: report, maybe stop early
    extra = ([pruning] if pruning is not None else []) + harness_callbacks(cfg, plan, refs.run_dir)
    rolling = next(c for c in ckpts if isinstance(c, RollingCheckpoints))
    stop = StopOnSignal(LISTENER, rolling)  # before the checkpoints: it asks rolling for this step's checkpoint
    trainer = build_trainer(cfg, plan, refs.run_dir, recorder.logger, [stop] + ckpts + list(callbacks) + extra +
                            [StartupTimer(started, recorder.log_metric), TokensSeen(), StepSeeds(cfg.seed)])
    model = _policy(cfg, plan, tokenizer)
    stop_ids = tokenizer.convert_tokens_to_ids(template.stop_tokens(tokenizer.eos_token))
    frozen = module_cls.frozen_models(cfg, model)
    report = None
    if cfg.method.get("precompute_ref"):
        frozen["reference_logps"], report = precomputed_reference(cfg, plan, model, data)
    module = module_cls(model, tokenizer, plan, cfg, data.generation_examples, stop_ids, **frozen)
    return Built(plan, tokenizer, data, model, module, trainer, best, ckpts, pruning, stop_ids, report)


def _policy(cfg: DictConfig, plan: Plan, tokenizer: Any):
    """The initial policy with PEFT applied; under FSDP2 off rank 0, an empty skeleton that rank 0's weights fill
    (``configure_model``)."""
    if plan.strategy == "fsdp" and not rank_zero():
        from hydralign.distributed.fsdp import empty_policy

        return empty_policy(cfg, tokenizer)
    return apply_peft(_initial_model(cfg, tokenizer), cfg.peft)


def _initial_model(cfg: DictConfig, tokenizer: Any):
    """The policy before PEFT: built from config or loaded, then ``init_from``'s weights. A 4-bit
    (QLoRA) base cannot take full-precision weights afterwards, so it loads ``init_from`` directly."""
    if cfg.init_from and cfg.peft.load_in_4bit:  # a training checkpoint is exported as a model directory first
        from hydralign.checkpoints.references import resolve_model_dir

        path = resolve_model_dir(cfg.init_from, cfg.logger.tracking_uri)
        mcfg = OmegaConf.merge(cfg.model, {"source": "pretrained", "name_or_path": str(path)})
        return build_model(mcfg, tokenizer, cfg.seed, cfg.peft)
    model = build_model(cfg.model, tokenizer, cfg.seed, cfg.peft)
    if cfg.init_from:
        load_weights(model, cfg.init_from)
    elif cfg.model.source == "config" and get_method(cfg.method.name).starts_from_trained:
        print(f"hydralign: note: method={cfg.method.name} starts from a random-init model (no init_from); "
              "it normally starts from an SFT run: init_from=<run dir>", flush=True)
    return model
