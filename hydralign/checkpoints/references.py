"""Checkpoint references: the one resolver behind ``init_from``, ``method.teacher_from`` (distillation), DPO's
reference (the initial policy) and ``resume``.

A reference is ``<source>[:<selector>]``:

- source: a hydralign run folder, an MLflow run (``runs:/<run id>``, found through its ``run_dir`` tag), a
  Hugging Face model directory (``*.safetensors``) or hub id (``org/name``, fetched into the local cache), or a
  Lightning checkpoint (``.ckpt`` file or sharded folder);
- selector (run folders and MLflow runs only): ``:best`` (by the run's ``checkpoint.monitor`` and mode),
  ``:best=<metric>,<min|max>``, ``:last``, ``:step=N``, ``:epoch=N``. Without one, a run gives its exported
  ``hf_model/`` (its final weights), else its newest checkpoint.

Checkpoints are picked from the run's ``checkpoints/index.json`` (steps, epochs and validation metrics as
recorded while training), never guessed from file names; a selector that matches nothing fails before
training with the checkpoints that exist, their steps and metric values. The result carries the lineage
that ``hydralign.tracking.recorder.log_lineage`` writes as MLflow tags (``lineage.source_run_id``,
``lineage.selector``, ``lineage.step``, ``lineage.metric``, ``lineage.metric_value``, ``lineage.path``).
File-system and MLflow look-ups only: torch is imported by ``resolve_model_dir`` alone, when a training
checkpoint must be exported as a Hugging Face copy (cached in the source run's ``exports/``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydralign.checkpoints import index as checkpoint_index
from hydralign.errors import ConfigError

# The config keys that hold references, and the MLflow tag prefix of each one's lineage.
REFERENCES = {"init_from": "lineage", "method.teacher_from": "lineage.teacher"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as on the Hugging Face hub
SELECTOR = re.compile(r"^(best(=[^,]+,(min|max))?|last|step=\d+|epoch=\d+(\.\d+)?)$")


@dataclass(frozen=True)
class Resolved:
    """Where a reference's weights are: ``path`` is a Hugging Face directory (``kind="hf"``) or a training
    checkpoint (``kind="ckpt"``, a file or a sharded folder); ``run_dir`` the source run, if any."""

    reference: str
    path: Path
    kind: str
    run_dir: Optional[Path] = None
    lineage: dict[str, str] = field(default_factory=dict)


def is_run_dir(path: Path) -> bool:
    return (path / "plan.json").is_file() or (path / "hf_model").is_dir() or (path / "checkpoints").is_dir()


def split_reference(ref: str) -> tuple[str, Optional[str]]:
    """("runs:/abc", "best") from "runs:/abc:best"; a colon that does not start a selector stays in the path."""
    if not ref.startswith("runs:/") and Path(ref).expanduser().exists():  # a real path, colons and all
        return ref, None
    head, sep, tail = ref.rpartition(":")
    if sep and head and SELECTOR.match(tail) and head != "runs":
        return head, tail
    return ref, None


_MEMO: dict[str, Resolved] = {}


def forget() -> None:
    """Start afresh: ``hydralign.run.job.run`` calls it first, so a process that runs several jobs (a reused
    launcher worker, a notebook) sees each run's newest checkpoints, and one run sees one answer throughout."""
    _MEMO.clear()


def remembered() -> dict[str, Resolved]:
    """The references resolved so far in this run (rank 0's are handed to the other ranks)."""
    return _MEMO


def resolve_reference(ref: str, tracking_uri: Optional[str] = None, what: str = "init_from") -> Resolved:
    """The weights a reference names, with their lineage. Remembered until ``forget()``, so every later
    look-up of the same reference within a run (the model loader, the reference cache's key) sees the same
    checkpoint."""
    if ref not in _MEMO:  # by reference alone: a later look-up without the store gets the same answer
        _MEMO[ref] = _resolve(ref, tracking_uri, what)
    return _MEMO[ref]


def _resolve(ref: str, tracking_uri: Optional[str], what: str) -> Resolved:
    source, selector = split_reference(ref)
    run_id = None
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").strip("/")
        path = _mlflow_run_dir(run_id, tracking_uri, f"{what}={ref}")
    else:
        path = Path(source).expanduser().resolve()
    if not path.exists() and run_id is None and HUB_ID.match(source):
        if selector:
            raise ConfigError(f"{what}={ref}: :{selector} picks among a hydralign run's checkpoints; {source} is a "
                              "Hugging Face hub id (its published weights only)")
        return Resolved(ref, _from_hub(source, what), "hf", lineage={"selector": "hub", "path": source})
    if not path.exists():
        raise ConfigError(f"{what}={ref}: {path} does not exist (cwd: {Path.cwd()})")
    if path.is_file() or (path.suffix == ".ckpt" and path.is_dir()):
        if path.suffix != ".ckpt":
            raise ConfigError(f"{what}={ref} is a file but not a Lightning .ckpt; give a model directory, a "
                              "hydralign run directory (with an optional :best, :last, :step=N, :epoch=N) or a .ckpt")
        if selector:
            raise ConfigError(f"{what}={ref}: a selector (:{selector}) picks among a run's checkpoints; "
                              f"give the run folder {path.parent.parent} instead of one checkpoint")
        return Resolved(ref, path, "ckpt", lineage={"selector": "checkpoint", "path": str(path)})
    if not is_run_dir(path):
        if selector:
            raise ConfigError(f"{what}={ref}: :{selector} needs a hydralign run folder or runs:/<id>; {path} is "
                              "not one (no plan.json, checkpoints/ or hf_model/)")
        if any(path.glob("*.safetensors")):
            return Resolved(ref, path, "hf", lineage={"selector": "model", "path": str(path)})
        raise ConfigError(f"{what}={ref}: no *.safetensors in that directory, and it is not a hydralign run "
                          "directory (no hf_model/, checkpoints/ or plan.json)")
    lineage = {"source_run_id": run_id or _run_id_of(path)}
    if selector is None:
        exported = path / "hf_model"
        if exported.is_dir() and any(exported.glob("*.safetensors")):
            return Resolved(ref, exported, "hf", path, {**lineage, "selector": "hf_model", "path": str(exported)})
        selector = "last"
    row, metric = _select(path, selector, f"{what}={ref}")
    lineage.update(selector=selector, step=str(row["step"]), path=str(row["path"]))
    if metric is not None:
        lineage.update(metric=metric, metric_value=repr(row["metrics"][metric]))
    return Resolved(ref, row["path"], "ckpt", path, {k: v for k, v in lineage.items() if v is not None})


def _from_hub(repo_id: str, what: str) -> Path:
    """A hub model's weights, config and tokenizer in the local Hugging Face cache (downloaded once)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                               "tokenizer*"]))
    except Exception as err:  # offline, unknown id, gated: say which, and what else is accepted
        raise ConfigError(f"{what}={repo_id}: not a local path, and fetching it from the Hugging Face hub failed "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); give a local "
                          "model directory, a hydralign run folder or runs:/<id>") from None


def _run_id_of(run_dir: Path) -> Optional[str]:
    id_file = run_dir / "mlflow_run_id"
    return id_file.read_text().strip() if id_file.is_file() else None


def _mlflow_run_dir(run_id: str, tracking_uri: Optional[str], what: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from hydralign.tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"{what}: no MLflow run {run_id} in {uri} ({str(err).splitlines()[0]}); set "
                          "logger.tracking_uri to the store that holds it") from None
    run_dir = run.data.tags.get("run_dir")
    if not run_dir:
        raise ConfigError(f"{what}: MLflow run {run_id} has no run_dir tag (not a hydralign run?)")
    return Path(run_dir)


def _monitor(run_dir: Path) -> tuple[Optional[str], Optional[str]]:
    index = checkpoint_index.read(run_dir / "checkpoints")
    if index.get("monitor"):
        return index["monitor"], index.get("mode", "min")
    config = run_dir / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        ccfg = OmegaConf.load(config).get("checkpoint", {})
        return ccfg.get("monitor"), ccfg.get("mode", "min")
    return None, None


def _listing(rows: list[dict], metric: Optional[str]) -> str:
    if not rows:
        return "none recorded"
    shown = []
    for r in rows:
        value = r["metrics"].get(metric) if metric else None
        extra = f", {metric}={value:.6g}" if value is not None else (", not validated" if not r["metrics"] else "")
        epoch = f", epoch {r['epoch']:g}" if r["epoch"] is not None else ""
        shown.append(f"{r['name']} (step {r['step']}{epoch}{extra})")
    return "; ".join(shown)


def _select(run_dir: Path, selector: str, what: str) -> tuple[dict, Optional[str]]:
    rows = checkpoint_index.entries(run_dir / "checkpoints")
    if selector == "last":  # what is on disk decides: an index one write behind, or none (an older run)
        from hydralign.checkpoints.files import checkpoint_step, latest_checkpoint

        newest = latest_checkpoint(run_dir / "checkpoints")
        if newest is not None and not any(r["path"] == newest for r in rows):
            step = checkpoint_step(newest)
            if step is None:  # last.ckpt of an older run: its step is in the file
                import torch

                step = int(torch.load(newest, map_location="cpu", weights_only=True, mmap=True)["global_step"])
            return {"name": newest.name, "path": newest, "step": step, "epoch": None, "metrics": {}}, None
    if not rows:
        raise ConfigError(f"{what}: {run_dir / 'checkpoints' / checkpoint_index.INDEX} records no checkpoint "
                          "that still exists (a run of an older version, or nothing saved yet)")
    if selector == "last":  # the newest step; its rolling checkpoint before a best-K copy of the same step
        return max(rows, key=lambda r: (r["step"], not r["name"].startswith("best"))), None
    if selector.startswith("step=") or selector.startswith("epoch="):
        key, _, value = selector.partition("=")
        want = float(value)
        found = [r for r in rows if r[key] is not None and math.isclose(float(r[key]), want, abs_tol=1e-6)]
        if not found:
            raise ConfigError(f"{what}: no checkpoint at {key} {value}; the run has: {_listing(rows, None)}")
        return min(found, key=lambda r: r["name"].startswith("best")), None  # the rolling one, if both
    if selector == "best":
        metric, mode = _monitor(run_dir)
        if not metric:
            raise ConfigError(f"{what}: the run records no monitored metric; say which: :best=<metric>,<min|max>")
    else:
        metric, mode = selector.removeprefix("best=").split(",")
    scored = [r for r in rows if metric in r["metrics"]]
    if not scored:
        raise ConfigError(f"{what}: no checkpoint has a validation value of {metric}; the run has: "
                          f"{_listing(rows, metric)}")
    sign = -1.0 if mode == "max" else 1.0  # the best value; on a tie, the earlier step
    return min(scored, key=lambda r: (sign * r["metrics"][metric], r["step"])), metric


# --- what the loaders call --------------------------------------------------------------------------
def resolve_weights(source: str, tracking_uri: Optional[str] = None) -> Path:
    """An HF directory holding ``*.safetensors``, or a training checkpoint (a ``.ckpt`` file or sharded folder)."""
    return resolve_reference(source, tracking_uri).path


def resolve_model_dir(source: str, tracking_uri: Optional[str] = None, what: str = "init_from") -> Path:
    """A Hugging Face directory (config.json, safetensors, tokenizer) for the reference: as is, or exported
    once from the training checkpoint it names into ``<source run>/exports/<checkpoint name>/`` (adapters
    merged), built from the source run's own config."""
    resolved = resolve_reference(source, tracking_uri, what)
    if resolved.kind == "hf":
        return resolved.path
    run_dir = resolved.run_dir or (resolved.path.parent.parent if resolved.path.parent.name == "checkpoints"
                                   else None)
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{what}={source}: exporting {resolved.path} as a model needs its run's config.yaml "
                          "(architecture and tokenizer); give the run folder with a selector instead")
    out = run_dir / "exports" / resolved.path.name.removesuffix(".ckpt")
    if not (out / "config.json").is_file():
        import fcntl

        from hydralign.checkpoints.export import export_checkpoint

        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / (out.name + ".lock"), "w") as lock:  # parallel jobs and ranks export it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "config.json").is_file():
                export_checkpoint(resolved.path, run_dir / "config.yaml", out)
    return out


def describe(resolved: Resolved) -> str:
    bits = [f"{k.replace('_', ' ')} {v}" for k, v in resolved.lineage.items() if k != "path"]
    return f"{resolved.reference} -> {resolved.path}" + (f" ({', '.join(bits)})" if bits else "")


def lineage_tags(resolved: Resolved, prefix: str = "lineage") -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in resolved.lineage.items()}


def reference_of(cfg: Any, key: str) -> Optional[str]:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    return str(value) if value else None
