"""Which checkpoint a run continues from, and whether it may: the newest complete checkpoint of a run
folder, a refusal naming the keys that differ when the configuration changed, and the loop counters
re-derived when the world size (and so the accumulation) changed. Torch is imported only to read a
checkpoint's small metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydralign.checkpoints.files import SHARDED_META, checkpoint_step, latest_checkpoint
from hydralign.config.read import setting
from hydralign.errors import ConfigError

# What a checkpoint's weights, optimizer state and data order depend on: resuming with another value is
# refused. Everything else (lr, schedule, max_steps, eval cadence, processes per node, ...) may change.
COMPAT_KEYS = (
    "model.name", "model.source", "model.name_or_path", "model.revision", "model.tokenizer",
    "model.hidden_size", "model.num_layers", "model.num_heads", "model.num_kv_heads",
    "model.intermediate_size", "model.max_position_embeddings", "model.tie_word_embeddings",
    "peft.name", "peft.r", "peft.target_modules", "peft.bias", "peft.load_in_4bit",
    "method.name", "batch.effective", "seed",
)


def _plain(cfg: Any, dotted: str) -> Any:
    """The value at ``dotted`` as plain Python (lists and dicts resolved), None where the config lacks it."""
    from omegaconf import Container, OmegaConf

    value = OmegaConf.select(cfg, dotted, default=None)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value


def compat_signature(cfg: Any) -> dict[str, Any]:
    """The values of ``COMPAT_KEYS`` in this config (stored in every checkpoint), and the data order's one
    dependency beyond them: packed rows (their size) are what the schedule draws, not examples; padded and
    padding-free runs draw the same examples, so they resume each other."""
    signature = {key: _plain(cfg, key) for key in COMPAT_KEYS}
    packed = setting(cfg, "data.packing") == "packed"
    signature["data.packed_rows"] = setting(cfg, "data.max_tokens_per_micro") if packed else None
    return signature


def resolve_resume(resume: Optional[str], run_dir: Path,
                   tracking_uri: Optional[str] = None) -> tuple[Path, Optional[Path]]:
    """``resume``: "auto" (this run_dir's newest complete checkpoint, if any: a fresh start otherwise),
    a run directory (continue it in place), a checkpoint (a ``.ckpt`` file or sharded folder), or a
    reference with a selector (``<run>:step=N``, ``runs:/<id>:last``; ``hydralign.checkpoints.references``).
    Returns (run directory to write into, checkpoint to restore)."""
    if not resume:
        return run_dir, None
    if resume == "auto":
        return run_dir, latest_checkpoint(run_dir / "checkpoints")
    from hydralign.checkpoints.references import resolve_reference, split_reference

    if split_reference(resume)[1] is not None or resume.startswith("runs:/"):  # <run>:step=N, runs:/<id>, ...
        if split_reference(resume)[1] is None:  # runs:/<id> alone: that run continues where it stopped
            resume += ":last"
        found = resolve_reference(resume, tracking_uri, what="resume")
        if found.kind != "ckpt" or found.run_dir is None:
            raise ConfigError(f"resume={resume} names exported weights, not a training checkpoint of a run: "
                              "use a selector (:last, :step=N, :best) or init_from to start a new run from them")
        return found.run_dir, found.path
    path = Path(resume).expanduser().resolve()
    if path.suffix == ".ckpt" and path.exists():  # a file, or a sharded checkpoint's folder
        run = path.parent.parent if path.parent.name == "checkpoints" else run_dir
        return run, path
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise ConfigError(f"resume={resume}: no complete checkpoint in {path / 'checkpoints'}; "
                              "nothing to resume from")
        return path, found
    raise ConfigError(f"resume={resume} is neither a run directory nor a checkpoint (.ckpt file or folder)")


# --- may this run continue it? ---------------------------------------------------------------
def check_newest(ckpt: Path, run_dir: Path, resume: str) -> None:
    """Resuming in place must continue the run's newest checkpoint: from an older one, the newer
    checkpoints and validations of the abandoned branch would stay beside the new ones (keep-last-K,
    ``:best`` and ``:last`` would mix the two)."""
    step, newest = checkpoint_step(ckpt), latest_checkpoint(run_dir / "checkpoints")
    newest_step = checkpoint_step(newest) if newest is not None else None
    if ckpt.parent == run_dir / "checkpoints" and step is not None and newest_step is not None and step < newest_step:
        raise ConfigError(f"resume={resume} is step {step}, but {run_dir} has gone on to step {newest_step} "
                          f"({newest.name}): continuing it in place would mix the two. Start a new run from its "
                          f"weights (init_from={resume}), or resume the newest (resume={run_dir})")


def checkpoint_meta(path: Path) -> Optional[dict]:
    """The ``hydralign`` entry a checkpoint carries (compat signature, world size, accumulation), read
    without loading the weights; None for a checkpoint written without one."""
    import torch

    if path.is_dir():
        meta = path / SHARDED_META
        if not meta.is_file():
            return None
        return torch.load(meta, map_location="cpu", weights_only=True).get("hydralign")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hydralign")


def check_resumable(ckpt: Path, cfg: Any, strategy: str, world_size: Optional[int] = None) -> Optional[dict]:
    """Refuses, before anything is built, a checkpoint this config cannot continue: another model,
    adapters, method, effective batch or seed (each differing key named with both values), a sharded
    checkpoint under a strategy that cannot read it, or a DeepSpeed checkpoint under another number of ranks
    (``world_size``). Returns the checkpoint's metadata."""
    if ckpt.is_dir():
        if not (ckpt / SHARDED_META).is_file():
            if strategy != "deepspeed":
                raise ConfigError(f"resume: {ckpt} is a DeepSpeed checkpoint folder; continue it with "
                                  "hardware.strategy=deepspeed")
            saved_ranks = len(list(ckpt.glob("*/zero_pp_rank_*_mp_rank_00_optim_states.pt")))
            if world_size is not None and saved_ranks and saved_ranks != world_size:
                raise ConfigError(f"resume: {ckpt} holds DeepSpeed optimizer partitions of {saved_ranks} ranks and "
                                  f"this run has {world_size}: resume it with {saved_ranks} processes (hydralign does "
                                  "not convert DeepSpeed checkpoints to another world size), or start a new run "
                                  "from its weights with init_from")
            return None
        if strategy != "fsdp":
            raise ConfigError(f"resume: {ckpt} is a sharded FSDP2 checkpoint (one part per rank); continue it "
                              "with hardware.strategy=fsdp (any number of processes: it is resharded on load)")
    meta = checkpoint_meta(ckpt)
    if meta is None:
        return None
    saved, now = meta.get("compat", {}), compat_signature(cfg)
    differ = [k for k in COMPAT_KEYS if k in saved and saved[k] != now[k]]
    if differ:
        lines = "; ".join(f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in differ)
        raise ConfigError(f"resume: {ckpt} was written by an incompatible configuration ({lines}). Resume with "
                          "the checkpoint's values, or start a new run from its weights with init_from=<checkpoint>")
    return meta


def rederive_loop_progress(checkpoint: dict, grad_accum: int, total_steps: int) -> None:
    """Lightning's loop counters from the optimizer steps done, in place. A checkpoint counts the
    micro-batches each rank ran, and the run's one epoch spans ``total_steps``: with another world size
    the same effective batch takes another accumulation, and a longer ``trainer.max_steps`` turns a
    finished epoch into one that goes on. Checkpoints are written at optimizer-step boundaries."""
    fit = checkpoint.get("loops", {}).get("fit_loop")
    steps = int(checkpoint.get("global_step", 0))
    if not fit or steps >= total_steps:
        return  # nothing left to run: Lightning ends the fit at once
    batches = steps * grad_accum
    progress = fit["epoch_loop.batch_progress"]
    for part in ("total", "current"):
        # Lightning tells where the checkpoint was written from processed - completed (1: at a batch's end,
        # before its completion was counted; 0: after it) and restores its logging step from that: keep it.
        lag = progress[part]["processed"] - progress[part]["completed"]
        for counter in progress[part]:
            progress[part][counter] = batches
        progress[part]["completed"] = batches - lag
    progress["is_last_batch"] = False
    epoch = fit.get("epoch_progress", {})
    for part in ("total", "current"):
        if part in epoch:
            epoch[part].update(processed=0, completed=0)
