"""The packing part of the plan (pure): ``data.packing`` (none, padding_free, packed) checked against the method's
flag, and packed rows sized to hold its longest example."""

from __future__ import annotations

from typing import Any, Optional

from hydralign.config.read import setting
from hydralign.errors import ConfigError
from hydralign.methods.specs import METHODS

PACKING_TEXT = {
    "none": "none (one right-padded row per sequence)",
    "padding_free": "padding_free (each micro-batch's sequences in one row, attention inside each)",
    "packed": "packed (rows of <= {n} tokens by best-fit decreasing; batch sizes count rows)",
}


def check_packing(cfg: Any, spec: Any) -> tuple[str, Optional[int]]:
    """(data.packing, tokens per packed row). Refuses a mode the method cannot use, and a row that could not
    hold the longest example (a pair: chosen + rejected)."""
    mode = str(setting(cfg, "data.packing") or "none")
    if mode not in PACKING_TEXT:
        raise ConfigError(f"data.packing={mode} is unknown; choose one of: {', '.join(PACKING_TEXT)}")
    if mode != "packed" and setting(cfg, "data.max_tokens_per_micro") is not None:
        raise ConfigError(f"data.max_tokens_per_micro={setting(cfg, 'data.max_tokens_per_micro')} sizes packed rows; "
                          f"with data.packing={mode} nothing reads it: set data.packing=packed or remove it")
    if mode == "none":
        return mode, None
    if not spec.packing:
        usable = ", ".join(n for n, s in METHODS.items() if s.packing)
        raise ConfigError(f"data.packing={mode} applies to method={usable}, not method={spec.name}; "
                          "set data.packing=none")
    if mode == "padding_free":
        return mode, None
    row = setting(cfg, "data.max_tokens_per_micro")
    longest = spec.sequences_per_example * int(setting(cfg, "data.max_seq_len"))
    if row is None:
        raise ConfigError(f"data.packing=packed needs data.max_tokens_per_micro (tokens per row), e.g. "
                          f"data.max_tokens_per_micro={max(longest, 1)}")
    if int(row) < longest:
        what = "a chosen + rejected pair" if spec.sequences_per_example == 2 else "an example"
        raise ConfigError(f"data.max_tokens_per_micro={row} cannot hold {what} of up to {longest} tokens "
                          f"(data.max_seq_len={setting(cfg, 'data.max_seq_len')}); set data.max_tokens_per_micro>={longest}")
    return mode, int(row)
