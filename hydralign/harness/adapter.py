"""The in-memory policy through lm-eval's own Hugging Face wrapper (``HFLM(pretrained=<nn.Module>)``) and
``lm_eval.simple_evaluate``, with the settings of ``eval.harness``.

What the model sees is what ``lm_eval --model hf --model_args pretrained=<hf_model dir>`` shows the exported
model: the same tokenizer, lm-eval's own seeds, chat template and few-shot handling, and the exported model's
end-of-turn tokens (``generation_config.eos_token_id``, set for the duration). A LoRA policy is evaluated as the
``PeftModel`` it is (adapters active). Training is left as it was: the model's train/eval mode and every random
generator lm-eval reseeds (Python, NumPy, torch on CPU and CUDA) are restored afterwards. The results JSON's
environment report (torch's ``collect_env``, which starts a dozen subprocesses: 0.4 s) is made once per process
and repeated in each later evaluation's JSON.
"""

from __future__ import annotations

import difflib
import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from unittest import mock

from hydralign.config.read import setting
from hydralign.errors import ConfigError
from hydralign.plan.harness import harness_batch

_ENVIRONMENT: dict[str, Any] = {}  # lm-eval's environment report, made by the first evaluation of this process
PACKAGE_TASKS = Path(__file__).resolve().parent / "tasks"  # hydralign_arithmetic.yaml: always on the include path


@dataclass(frozen=True)
class HarnessSettings:
    tasks: tuple[str, ...]
    include_path: tuple[str, ...]
    num_fewshot: Optional[int]
    limit: Optional[float]
    batch_size: int
    apply_chat_template: Optional[bool]  # None: when the tokenizer has a chat template
    gen_kwargs: Optional[dict[str, Any]]
    every: str

    @classmethod
    def from_config(cls, cfg: Any) -> HarnessSettings:
        def get(key: str) -> Any:
            return setting(cfg, f"eval.harness.{key}")

        gen_kwargs = get("gen_kwargs")
        limit = get("limit")
        return cls(tasks=tuple(str(t) for t in get("tasks") or ()),
                   include_path=tuple(str(p) for p in get("include_path") or ()),
                   num_fewshot=get("num_fewshot"),
                   limit=None if limit is None else (int(limit) if float(limit) >= 1 else float(limit)),
                   batch_size=harness_batch(cfg),
                   apply_chat_template=get("apply_chat_template"),
                   gen_kwargs=dict(gen_kwargs) if gen_kwargs else None, every=str(get("every")))


def include_paths(settings: HarnessSettings) -> list[str]:
    """hydralign's task folder first, then the user's (lm-eval lets a later folder's task replace an earlier one
    of the same name, so a user's YAML may redefine ``hydralign_arithmetic`` or ``gsm8k``)."""
    paths = [str(PACKAGE_TASKS)]
    for folder in settings.include_path:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"eval.harness.include_path: {folder} is not a folder (cwd: {Path.cwd()}); give "
                              "folders of lm-eval task YAMLs")
        paths.append(str(path))
    return paths


def task_manager(settings: HarnessSettings):
    """lm-eval's ``TaskManager`` over our folders alone when every task is there (fast), else over lm-eval's
    own ~15k task files as well (seconds); a name found in neither is refused with the closest names."""
    from lm_eval.tasks import TaskManager

    paths = include_paths(settings)
    manager = TaskManager(include_path=paths, include_defaults=False)
    if not all(t in manager.all_subtasks for t in settings.tasks):  # groups may name lm-eval's own tasks
        manager = TaskManager(include_path=paths)
    known = set(manager.all_tasks)
    missing = [t for t in settings.tasks if t not in known]
    if missing:
        hints = {t: difflib.get_close_matches(t, sorted(known), n=3) for t in missing}
        raise ConfigError(f"eval.harness.tasks: lm-eval knows no task or group {missing} (closest: {hints}); "
                          f"searched lm-eval's tasks and {paths} (eval.harness.include_path adds folders)")
    return manager


def chat_template_on(settings: HarnessSettings, tokenizer: Any) -> bool:
    if settings.apply_chat_template is not None:
        return bool(settings.apply_chat_template)
    return bool(getattr(tokenizer, "chat_template", None))


def evaluate(model: Any, tokenizer: Any, settings: HarnessSettings, manager: Any,
             stop_token_ids: Optional[list[int]] = None, synced: bool = False) -> Optional[dict[str, Any]]:
    """``simple_evaluate``'s results for the model as it is now (its own device); the samples are not kept.
    ``synced``: the weights are sharded over the ranks (FSDP2, ZeRO-3) and every rank calls this with the same
    settings: each runs all requests in the same order, so their forwards (which gather the layers) pair up, and
    generation keeps them in step (``generate(synced_gpus=True)``) should one rank's rows stop earlier. The results
    come back where ``LOCAL_RANK`` is 0 (lm-eval's rule), None on the other ranks of a node."""
    from lm_eval import simple_evaluate

    chat = chat_template_on(settings, tokenizer)
    with _isolated(model, stop_token_ids), mock.patch("lm_eval.evaluator.add_env_info", _environment_once):
        lm = _wrapper(synced)(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        results = simple_evaluate(model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                                  limit=settings.limit, apply_chat_template=chat, fewshot_as_multiturn=chat,
                                  gen_kwargs=settings.gen_kwargs, task_manager=manager, log_samples=False)
    if results is None and not synced:
        raise RuntimeError("lm_eval.simple_evaluate returned no results (it answers only on its rank 0)")
    return results


@functools.cache
def _wrapper(synced: bool) -> type:
    """lm-eval's ``HFLM``, or for sharded weights a subclass whose generation keeps the ranks in step."""
    from lm_eval.models.huggingface import HFLM

    if not synced:
        return HFLM

    class SyncedHFLM(HFLM):
        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            return super()._model_generate(context, max_length, stop, synced_gpus=True, **generation_kwargs)

    return SyncedHFLM


def _environment_once(storage: dict[str, Any]) -> None:
    """``lm_eval.loggers.utils.add_env_info`` (torch, transformers and lm-eval versions, pip list, CPU): the
    same in every evaluation of one process, so made once."""
    if not _ENVIRONMENT:
        from lm_eval.loggers.utils import add_env_info

        add_env_info(_ENVIRONMENT)
    storage.update(_ENVIRONMENT)


def results_json(results: dict[str, Any]) -> str:
    """lm-eval's results as its command line writes them (``results_<date>.json``)."""
    import json

    from lm_eval.utils import handle_non_serializable

    kept = {k: v for k, v in results.items() if k != "samples"}
    return json.dumps(kept, indent=2, default=handle_non_serializable, ensure_ascii=False)


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


@contextmanager
def _isolated(model: Any, stop_token_ids: Optional[list[int]]) -> Iterator[None]:
    """For the duration: the exported model's stop tokens; afterwards: the train/eval mode and every random
    generator as they were (``simple_evaluate`` seeds them to lm-eval's constants)."""
    import numpy as np
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    gen = getattr(base, "generation_config", None)
    eos = gen.eos_token_id if gen is not None else None
    modes, py_state, np_state = [(m, m.training) for m in model.modules()], random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if gen is not None and stop_token_ids:
                gen.eos_token_id = list(stop_token_ids)
            yield
        finally:
            if gen is not None:
                gen.eos_token_id = eos
            for module, training in modes:
                module.train(training)
            random.setstate(py_state)
            np.random.set_state(np_state)
