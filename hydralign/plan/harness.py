"""The plan's part for downstream evaluation (``eval.harness.*``): what can be refused before anything loads.
Pure (no torch, no I/O): whether the task names exist is asked of lm-eval when the run builds its callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydralign.config.read import setting
from hydralign.errors import ConfigError

EVERY = ("none", "end", "checkpoint", "validation")


def harness_batch(cfg: Any) -> int:
    """lm-eval's rows per forward: ``eval.harness.batch_size``, or (null) the validation's ``eval.batch_size``."""
    batch = setting(cfg, "eval.harness.batch_size")
    return int(batch if batch is not None else setting(cfg, "eval.batch_size"))


def check_harness(cfg: Any) -> str:
    """``eval.harness.every`` once checked (none | end | checkpoint | validation); refuses a value lm-eval or the
    cadence could not use, with the override that fixes it."""
    every = str(setting(cfg, "eval.harness.every"))
    if every not in EVERY:
        raise ConfigError(f"eval.harness.every={every} must be one of {' | '.join(EVERY)} (when lm-eval runs "
                          "during training)")
    tasks = list(setting(cfg, "eval.harness.tasks") or [])
    if every != "none" and not tasks:
        raise ConfigError(f"eval.harness.every={every} evaluates eval.harness.tasks, which is empty: give "
                          "eval.harness.tasks=[hydralign_arithmetic] (or lm-eval task names), or "
                          "eval.harness.every=none")
    bad = [t for t in tasks if not isinstance(t, str) or not t.strip() or "," in t]
    if bad:
        raise ConfigError(f"eval.harness.tasks={tasks}: each entry is one lm-eval task or group name (a list, "
                          f"not a comma-separated string): {bad}")
    _check_numbers(cfg)
    gen_kwargs = setting(cfg, "eval.harness.gen_kwargs")
    if gen_kwargs is not None and not isinstance(gen_kwargs, Mapping) and not hasattr(gen_kwargs, "keys"):
        raise ConfigError(f"eval.harness.gen_kwargs={gen_kwargs} must be a mapping, e.g. "
                          "eval.harness.gen_kwargs={max_gen_toks:64}, or null")
    include = setting(cfg, "eval.harness.include_path")
    if isinstance(include, str):
        raise ConfigError(f"eval.harness.include_path={include} must be a list of folders: "
                          f"eval.harness.include_path=[{include}]")
    return every


def _check_numbers(cfg: Any) -> None:
    batch = setting(cfg, "eval.harness.batch_size")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"eval.harness.batch_size={batch} must be an integer >= 1 (examples per forward), or "
                          "null for eval.batch_size")
    fewshot = setting(cfg, "eval.harness.num_fewshot")
    if fewshot is not None and (not isinstance(fewshot, int) or fewshot < 0):
        raise ConfigError(f"eval.harness.num_fewshot={fewshot} must be an integer >= 0, or null for each task's "
                          "own")
    limit = setting(cfg, "eval.harness.limit")
    if limit is not None and (float(limit) <= 0 or (float(limit) > 1 and float(limit) != int(limit))):
        raise ConfigError(f"eval.harness.limit={limit} must be a count of examples per task (an integer >= 1), a "
                          "fraction in (0, 1), or null for all")


def check_evaluation(cfg: Any) -> tuple[str, tuple[str, ...]]:
    """``python -m hydralign.evaluate``'s config, checked before anything loads: (the checkpoint reference, the
    tasks). It needs ``init_from`` and ``eval.harness.tasks``; ``eval.harness.every`` (a training cadence) is not
    read; the other ``eval.harness.*`` settings are checked as for training."""
    reference = setting(cfg, "init_from")
    if not reference or not str(reference).strip():
        raise ConfigError("init_from is not set: python -m hydralign.evaluate evaluates a checkpoint; give "
                          "init_from=<run folder>:step=N (or :last, :best, :best=<metric>,<min|max>), "
                          "init_from=runs:/<mlflow run id>[:selector] or init_from=<Hugging Face model directory>")
    tasks = tuple(setting(cfg, "eval.harness.tasks") or ())
    if not tasks:
        raise ConfigError("eval.harness.tasks is empty: give the lm-eval tasks to run, e.g. eval.harness.tasks="
                          "[hydralign_arithmetic] (ships with hydralign) or eval.harness.tasks=[gsm8k] (with "
                          "eval.harness.include_path=[<folder of task YAMLs>] for local data)")
    check_harness(cfg)
    return str(reference), tasks
