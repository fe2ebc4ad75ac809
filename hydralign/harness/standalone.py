"""``python -m hydralign.evaluate``'s work: one checkpoint reference evaluated with lm-eval, without training, as its
own MLflow run (under ``-m``, a child of the sweep's parent run).

    source   ``init_from`` resolved (``hydralign.checkpoints.references``): a run's checkpoint (exported once as a
             Hugging Face directory into the source run's ``exports/``), its ``hf_model/``, or a model directory;
             the optimizer step it holds and its lineage
    model    that directory loaded as ``lm_eval --model hf --model_args pretrained=<dir>`` loads it (its own
             dtype), with the source run's end-of-turn tokens as stop tokens, as during training
    record   ``eval/<task>/<metric>`` at the source checkpoint's step, lm-eval's version and per-task sample
             counts as params, the results JSON as the artifact ``harness/stepNNNNNN.json``, lineage tags and
             ``metrics.json`` in the evaluation's own folder

A reference that matches nothing and a task lm-eval does not know are refused before the MLflow run exists.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from hydralign.checkpoints.references import Resolved, describe, forget, resolve_model_dir, resolve_reference
from hydralign.harness.adapter import HarnessSettings, evaluate, lm_eval_version, results_json, task_manager
from hydralign.harness.metrics import ENTRY_TAG, SOURCE_STEP_TAG, flatten_results, run_params


@dataclass(frozen=True)
class Source:
    resolved: Resolved
    model_dir: Path  # a Hugging Face directory (config.json, safetensors, tokenizer)
    step: int  # the optimizer step its weights are from (0 for a model directory outside any run)


def source_step(resolved: Resolved) -> int:
    """The checkpoint's recorded step; for a run's ``hf_model/`` (its final weights) the run's ``train/steps``."""
    if "step" in resolved.lineage:
        return int(resolved.lineage["step"])
    metrics = resolved.run_dir / "metrics.json" if resolved.run_dir is not None else None
    if metrics is not None and metrics.is_file():
        return int(json.loads(metrics.read_text()).get("train/steps", 0))
    return 0


def resolve_source(reference: str, tracking_uri: Optional[str]) -> Source:
    forget()  # afresh: a :last may have moved since this process last looked
    resolved = resolve_reference(reference, tracking_uri)
    model_dir = resolve_model_dir(reference, tracking_uri)
    print(f"hydralign.evaluate: init_from: {describe(resolved)}", flush=True)
    return Source(resolved, model_dir, source_step(resolved))


def stop_token_ids(source: Source, tokenizer: Any) -> Optional[list[int]]:
    """The end-of-turn tokens the source run generated with (its chat template's); None outside a hydralign run
    (the directory's own ``generation_config`` decides, as for the ``lm_eval`` command line)."""
    config = source.resolved.run_dir / "config.yaml" if source.resolved.run_dir is not None else None
    if config is None or not config.is_file():
        return None
    from hydralign.data.chat import template_for

    name = str(OmegaConf.load(config).model.chat_template)
    template = template_for(name, tokenizer) if name == "auto" else template_for(name)
    return list(tokenizer.convert_tokens_to_ids(template.stop_tokens(tokenizer.eos_token)))


def load_model(model_dir: Path, accelerator: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if accelerator == "gpu" and torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device)
    return model.eval(), tokenizer


def run_name(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    """(name, tags): the reference as given, then any other swept override of this job (``eval.harness.limit=64``)."""
    from hydralign.tracking.store import SWEEP_FILE_ENV, hydra_job

    name, tags = str(cfg.init_from), {}
    job = hydra_job()
    if job is not None:
        num, overrides = job
        sweep_file = os.environ.get(SWEEP_FILE_ENV)
        info = json.loads(Path(sweep_file).read_text()) if sweep_file and Path(sweep_file).is_file() else {}
        fixed = set(info.get("fixed_keys", [])) | {"init_from"}
        others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in fixed]
        name = " ".join([name, *others])
        tags = {"job_num": str(num), "overrides": " ".join(overrides)}
    return cfg.logger.run_name or name, tags


def open_run(cfg: DictConfig, source: Source, run_dir: Path):
    """Lightning's MLFlowLogger on a new run (a child of ``$HYDRALIGN_PARENT_RUN_ID``'s sweep parent, if any) with
    the evaluation's params and the source's lineage tags; None for ``logger=none``."""
    if cfg.logger.name == "none":
        return None
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from hydralign.secrets import redact_tree
    from hydralign.tracking.recorder import PARENT_ENV, SWEEP_ID_ENV, log_lineage, log_params
    from hydralign.tracking.store import (
        artifact_location,
        config_hash,
        ensure_experiment,
        flatten,
        git_commit,
        tracking_uri,
    )

    uri = tracking_uri(cfg.logger.tracking_uri)
    ensure_experiment(MlflowClient(tracking_uri=uri), uri, cfg.logger.experiment_name)
    name, tags = run_name(cfg)
    tags.update({"git_commit": git_commit(), "config_hash": config_hash(OmegaConf.to_yaml(cfg, resolve=True)),
                 ENTRY_TAG: "evaluate", SOURCE_STEP_TAG: str(source.step), "run_dir": str(run_dir),
                 **{str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}})
    if os.environ.get(PARENT_ENV):
        tags.update({"mlflow.parentRunId": os.environ[PARENT_ENV], "sweep_id": os.environ.get(SWEEP_ID_ENV, "")})
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment_name, run_name=name, tracking_uri=uri, tags=tags,
                          synchronous=True, artifact_location=artifact_location(uri, cfg.logger.experiment_name))
    (run_dir / "mlflow_run_id").write_text(logger.run_id)
    harness = OmegaConf.to_container(cfg.eval.harness, resolve=True)
    log_params(logger, redact_tree({"init_from": str(cfg.init_from), "seed": str(cfg.seed),
                                    **flatten(harness, "eval.harness.")}))
    log_lineage(logger, {"init_from": source.resolved})
    return logger


def record(logger, run_dir: Path, source: Source, results: dict, seconds: float) -> dict[str, float]:
    from hydralign.checkpoints.saving import write_json
    from hydralign.tracking.recorder import log_params
    from hydralign.tracking.store import retry_locked

    metrics = flatten_results(results)
    out = run_dir / "harness" / f"step{source.step:06d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results_json(results))
    write_json(run_dir / "metrics.json", metrics)
    if logger is not None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, source.step) for k, v in metrics.items()]
        batch.append(Metric("time/harness_seconds", seconds, now, source.step))
        retry_locked(logger.experiment.log_batch, logger.run_id, metrics=batch)
        log_params(logger, run_params(results, lm_eval_version()))
        retry_locked(logger.experiment.log_artifact, logger.run_id, str(out), "harness")
    shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in sorted(metrics.items()))
    print(f"lm-eval of {source.resolved.reference} (step {source.step}, {seconds:.1f} s): {shown}", flush=True)
    return metrics


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Evaluate ``init_from`` on ``eval.harness.tasks``; return ``{eval/<task>/<metric>: value}``."""
    from hydralign.tracking.recorder import finish

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(str(cfg.init_from), cfg.logger.tracking_uri)
    settings = HarnessSettings.from_config(cfg)
    manager = task_manager(settings)  # an unknown task is refused before the MLflow run exists
    logger = open_run(cfg, source, run_dir)
    state, error = "FAIL", None
    try:
        model, tokenizer = load_model(source.model_dir, str(cfg.hardware.accelerator))
        started = time.time()
        results = evaluate(model, tokenizer, settings, manager, stop_token_ids(source, tokenizer))
        metrics = record(logger, run_dir, source, results, time.time() - started)
        state = "COMPLETE"
    except BaseException as err:
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        raise
    finally:
        if logger is not None:
            finish(logger, state, error)
    return metrics
