"""The embedded arithmetic task as lm-eval data: the held-out (val) sums of hydralign's own generator
(``hydralign.data.arithmetic.make_splits``), for the task ``hydralign_arithmetic`` (``tasks/hydralign_arithmetic.yaml``).

By default the split is the default job's (seed 0 and ``data.arithmetic``'s schema defaults), so a default run
never trained on these sums; a task YAML that includes ours can give other ``dataset_kwargs`` (a run shrunk to
2-digit sums, another seed) to score the val split of that run."""

from __future__ import annotations

import functools
from typing import Any, Optional

from hydralign.config.read import schema_default
from hydralign.data.arithmetic import make_splits

SPLIT_KEYS = ("num_train", "num_val", "max_digits", "pad_operands", "reverse_operands", "balanced_fraction")


def val_examples(seed: Optional[int] = None, **settings: Any) -> list[dict[str, str]]:
    """``[{"prompt": "700+240=", "answer": "94"}, ...]``: the val split the arithmetic data of ``settings``
    (``data.arithmetic.*`` keys; the schema's defaults for those not given) holds out with ``seed``."""
    split = {k: settings.get(k, schema_default(f"data.arithmetic.{k}")) for k in SPLIT_KEYS}
    seed = int(schema_default("seed") if seed is None else seed)
    pairs = _val_pairs(seed, int(split["num_train"]), int(split["num_val"]), int(split["max_digits"]),
                       bool(split["pad_operands"]), bool(split["reverse_operands"]), float(split["balanced_fraction"]))
    return [{"prompt": prompt, "answer": answer} for prompt, answer in pairs]


@functools.lru_cache(maxsize=8)  # drawing the default split (20,500 sums) took 0.29 s of each ~1 s evaluation
def _val_pairs(seed: int, num_train: int, num_val: int, max_digits: int, pad: bool, reverse: bool,
               balanced: float) -> tuple[tuple[str, str], ...]:
    records = make_splits(seed, num_train, num_val, max_digits, None, pad, reverse, balanced)["val"]
    return tuple((r["messages"][0]["content"], r["messages"][1]["content"]) for r in records)


def dataset(**kwargs: Any):
    """lm-eval's ``custom_dataset``: called with the task's ``metadata`` and ``dataset_kwargs`` (``version`` and
    any other key not in ``SPLIT_KEYS`` or ``seed`` is ignored)."""
    import datasets

    chosen = {k: v for k, v in kwargs.items() if k in SPLIT_KEYS or k == "seed"}
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(val_examples(**chosen))})
