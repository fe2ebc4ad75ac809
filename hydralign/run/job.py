"""``run(cfg) -> metrics``: config -> plan -> components -> Trainer.fit -> tracking. Testable without Hydra."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from hydralign.errors import ConfigError
from hydralign.methods.specs import get_method
from hydralign.plan.core import Plan, make_plan
from hydralign.plan.format import format_plan

# Sizes the plan owns; setting them under trainer.* would fork the truth.
PLANNED_TRAINER_KEYS = {"accumulate_grad_batches": "batch.effective / batch.micro",
                        "devices": "hardware.devices_per_node", "num_nodes": "hardware.nodes",
                        "precision": "hardware.precision", "strategy": "hardware.strategy",
                        "accelerator": "hardware.accelerator", "val_check_interval": "eval.every_n_steps",
                        "gradient_clip_val": "optimizer.grad_clip"}


def default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise ConfigError("run_dir is not set and Hydra is not running: pass run_dir=/some/dir") from None


def build_trainer(cfg: Any, plan: Plan, run_dir: Path, logger: Any, callbacks: list):
    import lightning as L

    from hydralign.checkpoints.saving import AtomicCheckpointIO
    from hydralign.distributed.strategies import build_strategy

    user = {k: v for k, v in (OmegaConf.to_container(cfg.trainer, resolve=True) or {}).items() if v is not None}
    for key, owner in PLANNED_TRAINER_KEYS.items():
        if key in user:
            raise ConfigError(f"trainer.{key} is derived by hydralign; set {owner} instead")
    for key in ("max_steps", "max_epochs"):
        user.pop(key, None)  # the plan turned them into plan.total_steps
    total_batches = plan.total_steps * plan.grad_accum
    kwargs = dict(
        accelerator=cfg.hardware.accelerator, devices=plan.devices_per_node, num_nodes=plan.nodes,
        precision=plan.precision, strategy=build_strategy(plan, cfg), max_steps=plan.total_steps,
        max_epochs=1, accumulate_grad_batches=plan.grad_accum, gradient_clip_val=cfg.optimizer.grad_clip,
        val_check_interval=min(plan.eval_every_n_steps * plan.grad_accum, total_batches),
        check_val_every_n_epoch=None, num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=logger if logger is not None else False, callbacks=callbacks, default_root_dir=str(run_dir),
        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
    )
    kwargs.update(user)
    return L.Trainer(**kwargs)


def _rank_zero() -> bool:
    """Before the Trainer exists: torchrun / SLURM export the process rank."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def objective(metrics: dict[str, float], name: str) -> float:
    """The value a sweep optimizes; a name no run logs fails loudly with the names it did log."""
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not logged by this run; logged: {sorted(metrics)}")
    return metrics[name]


def run(cfg: DictConfig, callbacks: Optional[list] = None, started: Optional[float] = None) -> dict[str, float]:
    """Train per the config; return the final metrics (``val/*`` of the last validation, ``best/*``).
    ``callbacks`` are added to the Trainer's (tests, benchmarks); ``started`` is when the job began
    (default: now), the origin of ``time/startup_seconds`` (job start to first training step)."""
    started = started or time.time()
    from hydralign.checkpoints.references import forget as forget_references
    from hydralign.checkpoints.resume import check_newest, check_resumable, resolve_resume

    forget_references()  # references resolve afresh for each run (a :last may have moved since)
    from hydralign.tracking.recorder import (
        config_params,
        finish,
        log_lineage,
        log_params,
        make_logger,
    )

    run_dir, ckpt_path = resolve_resume(cfg.resume, Path(cfg.run_dir) if cfg.run_dir else default_run_dir(),
                                        cfg.logger.tracking_uri)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "mlflow_run_id"
    run_id: Optional[str] = id_file.read_text().strip() if ckpt_path and id_file.is_file() else None
    # The MLflow run exists from the start, so a job that fails while loading data is a FAILED run.
    config_plan = make_plan(cfg)  # refuses what the strategy cannot run, before the MLflow run exists
    if ckpt_path is not None:  # another model, effective batch, ...: refused with the keys that differ
        check_newest(ckpt_path, run_dir, str(cfg.resume))
        check_resumable(ckpt_path, cfg, config_plan.strategy)
    lineage = resolve_lineage(cfg)  # init_from / teacher_from that match nothing fail here, listing what exists
    logger = make_logger(cfg, config_plan, run_dir, run_id=run_id)
    if logger is not None and _rank_zero():
        id_file.write_text(logger.run_id)
        log_params(logger, config_params(cfg, config_plan))
        log_lineage(logger, lineage)
    state, error = "FAIL", None
    try:
        metrics, pruned_at = _train(cfg, run_dir, ckpt_path, logger, list(callbacks or []), started)
        state = "COMPLETE" if pruned_at is None else "PRUNED"
    except BaseException as err:
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        if logger is not None and _rank_zero():
            finish(logger, state, error)
    if pruned_at is not None:  # the sweeper records the trial as PRUNED
        import optuna

        from hydralign.sweep.study import job_trial

        raise optuna.TrialPruned(f"trial {getattr(job_trial(), 'number', '?')} pruned at step {pruned_at}")
    return metrics


def _train(cfg: DictConfig, run_dir: Path, ckpt_path: Optional[Path], logger: Any, callbacks: list,
           started: float) -> tuple[dict[str, float], Optional[int]]:
    import lightning as L

    from hydralign.checkpoints.saving import RollingCheckpoints, checkpoint_callbacks, write_json
    from hydralign.data.module import PostTrainingData
    from hydralign.methods.specs import get_method
    from hydralign.models import tokenizer_and_template
    from hydralign.models.peft import apply_peft, trainable_summary
    from hydralign.run.callbacks import StartupTimer, StepSeeds, TokensSeen
    from hydralign.tracking.recorder import log_run_start

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = get_method(cfg.method.name)
    tokenizer, template = tokenizer_and_template(cfg.model)
    module_cls = spec.module_class()
    module_cls.check_before_models(cfg, tokenizer)  # e.g. a teacher with another tokenizer: refused before loading
    data = PostTrainingData(cfg, tokenizer, template, kind=spec.data_kind, unit=spec.unit)
    data.load()
    module_cls.check_data(cfg, data)  # e.g. a routed source no record has: refused before any model loads
    plan = make_plan(cfg, num_train_examples=data.num_train_items)
    data.serve(plan)

    best_cb, ckpt_cbs = checkpoint_callbacks(cfg.checkpoint, run_dir / "checkpoints", plan.eval_every_n_steps,
                                             plan.steps_per_epoch, plan.checkpoint_every_n_steps)
    from hydralign.sweep.pruning import pruning_callback

    pruning = pruning_callback(cfg.optimized_metric)  # a job of an Optuna sweep: report, maybe stop early
    if pruning is not None:
        callbacks.append(pruning)
    trainer = build_trainer(cfg, plan, run_dir, logger,
                            ckpt_cbs + callbacks + [StartupTimer(started), TokensSeen(), StepSeeds(cfg.seed)])

    if plan.strategy == "fsdp" and not _rank_zero():  # FSDP2: rank 0's weights fill the shards (configure_model)
        from hydralign.distributed.fsdp import empty_policy

        model = empty_policy(cfg, tokenizer)
    else:
        model = apply_peft(_initial_model(cfg, tokenizer), cfg.peft)
    stop_ids = tokenizer.convert_tokens_to_ids(template.stop_tokens(tokenizer.eos_token))
    frozen = module_cls.frozen_models(cfg, model)
    reference_report = None
    if getattr(cfg.method, "precompute_ref", False):
        frozen["reference_logps"], reference_report = _precomputed_reference(cfg, plan, model, data)
    module = module_cls(model, tokenizer, plan, cfg, data.generation_examples, stop_ids, **frozen)

    if trainer.is_global_zero:
        print(format_plan(plan, title=f"plan ({run_dir})"), flush=True)
        print(data.summary(), flush=True)
        print(f"model: {trainable_summary(model)}", flush=True)
        if reference_report is not None:
            print(f"reference log-probs: {'read from' if reference_report['hit'] else 'computed into'} "
                  f"{reference_report['path']} in {reference_report['seconds']:.1f} s", flush=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        write_json(run_dir / "plan.json", plan.as_dict())
        if plan.strategy == "deepspeed":  # the config DeepSpeed runs with, as generated from the plan
            from hydralign.distributed.strategies import DEEPSPEED_CONFIG_FILE, deepspeed_config

            write_json(run_dir / DEEPSPEED_CONFIG_FILE, deepspeed_config(plan, cfg))
        if logger is not None:
            extra = {k: v for s, st in data.stats.items() for k, v in st.as_metrics(s).items()}
            if reference_report is not None:
                extra.update({"reference/cache_hit": float(reference_report["hit"]),
                              "reference/precompute_seconds": reference_report["seconds"]})
            log_run_start(logger, plan, run_dir, extra)
            if plan.strategy == "deepspeed":
                from hydralign.tracking.store import retry_locked

                retry_locked(logger.experiment.log_artifact, logger.run_id, str(run_dir / DEEPSPEED_CONFIG_FILE))

    if cfg.eval.at_start and ckpt_path is None:
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    pruned_at = pruning.pruned_at if pruning else None
    if module.last_val_step != trainer.global_step and pruned_at is None:
        trainer.validate(module, datamodule=data, verbose=False)  # the final step is always scored
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "step"}  # train/, val/, method's own
    if best_cb.best_model_score is not None:
        metrics[f"best/{cfg.checkpoint.monitor}"] = float(best_cb.best_model_score)
    metrics["train/steps"] = float(trainer.global_step)
    rolling = next((c for c in ckpt_cbs if isinstance(c, RollingCheckpoints)), None)
    if rolling is not None and cfg.checkpoint.save_last:  # the final state, if the cadence missed it
        rolling.save(trainer)
    if cfg.checkpoint.export_hf and pruned_at is None:
        from hydralign.distributed.fsdp import whole_weights

        with whole_weights(module.model, plan, cfg, tokenizer) as exported:  # sharded: every rank gives its part
            if trainer.is_global_zero:
                _export(exported, tokenizer, run_dir, stop_ids, cfg)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        if logger is not None:
            logger.experiment.log_metric(logger.run_id, "time/run_seconds", time.time() - started)
            if best_cb.best_model_path:
                logger.experiment.set_tag(logger.run_id, "best_checkpoint", best_cb.best_model_path)
    trainer.strategy.barrier("run end")  # no rank leaves (and tears its connections down) before rank 0 is done
    return metrics, pruned_at


def resolve_lineage(cfg: DictConfig) -> dict[str, Any]:
    """{config key: Resolved} for each reference the config sets; printed by rank 0."""
    from hydralign.checkpoints.references import REFERENCES, describe, reference_of, resolve_reference

    found = {}
    for key in REFERENCES:
        ref = reference_of(cfg, key)
        if ref:
            found[key] = resolve_reference(ref, cfg.logger.tracking_uri, what=key)
            if _rank_zero():
                print(f"hydralign: {key}: {describe(found[key])}", flush=True)
    return found


def _initial_model(cfg: DictConfig, tokenizer: Any):
    """The policy before PEFT: built from config or loaded, then ``init_from``'s weights. A 4-bit
    (QLoRA) base cannot take full-precision weights afterwards, so it loads ``init_from`` directly."""
    from hydralign.models import build_model, load_weights

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


def _precomputed_reference(cfg: DictConfig, plan: Plan, policy: Any, data: Any) -> tuple[dict, dict]:
    """Reference log-probs of every train and val pair, from the cache or computed now with the
    initial policy (adapters disabled), before any checkpoint is restored: that policy is the reference."""
    import torch

    from hydralign.methods import reference_cache as rc

    key, described = rc.cache_key(cfg, data)
    sizes = {s: len(getattr(data, f"{s}_examples")) for s in rc.SPLITS}
    if plan.accelerator == "gpu":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(plan.precision)

    def compute() -> dict:
        policy.to(device)
        try:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return {s: rc.compute_logps(policy, getattr(data, f"{s}_examples"), data.tokenizer.pad_token_id,
                                            cfg.eval.batch_size, device) for s in rc.SPLITS}
        finally:
            policy.to("cpu")

    if plan.strategy == "fsdp" and not _rank_zero():  # FSDP2: this rank's policy is an empty skeleton
        return _wait_for_rank_zero(lambda not_ready: rc.load_or_compute(rc.default_cache_dir(cfg), key, described,
                                                                        sizes, not_ready))
    return rc.load_or_compute(rc.default_cache_dir(cfg), key, described, sizes, compute)


class _NotReady(Exception):
    pass


def _wait_for_rank_zero(load: Any, timeout_s: float = 3600.0) -> Any:
    """``load(compute)`` until rank 0 has written what this rank cannot compute itself."""
    def not_ready() -> dict:
        raise _NotReady

    deadline = time.time() + timeout_s
    while True:
        try:
            return load(not_ready)
        except _NotReady:
            if time.time() > deadline:
                raise TimeoutError(f"rank 0 wrote no reference log-probs within {timeout_s:.0f} s") from None
            time.sleep(min(1.0, timeout_s))


def _export(model: Any, tokenizer: Any, run_dir: Path, stop_ids: list[int], cfg: DictConfig) -> None:
    """hf_model/: the full model (adapters merged in with PEFT); adapter/: the adapters alone."""
    from hydralign.checkpoints.saving import export_hf
    from hydralign.models.peft import is_peft, merged_copy, save_adapters

    if not is_peft(model):
        export_hf(model, tokenizer, run_dir / "hf_model", stop_ids)
        return
    save_adapters(model, run_dir / "adapter", tokenizer)
    if not cfg.peft.merge_on_export:
        return
    if cfg.peft.load_in_4bit:  # a 4-bit base cannot take merged weights: merge into an unquantized one
        from hydralign.models import build_model, load_weights
        from hydralign.models.peft import merge_saved_adapters

        base = build_model(cfg.model, tokenizer, cfg.seed)
        if cfg.init_from:
            load_weights(base, cfg.init_from)
        export_hf(merge_saved_adapters(base, run_dir / "adapter"), tokenizer, run_dir / "hf_model", stop_ids)
    else:
        export_hf(merged_copy(model), tokenizer, run_dir / "hf_model", stop_ids)
