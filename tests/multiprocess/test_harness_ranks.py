"""lm-eval during training under 2 CPU ranks: DDP's rank 0 evaluates its whole copy while the other waits; under
FSDP2 no rank holds the whole policy: both run the same requests on their shards. The numbers are one process's at
every checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_harness import SPLIT, write_tasks

pytestmark = pytest.mark.slow

COMMON = [f"data.arithmetic.{k}={v}" for k, v in SPLIT.items()] + [
    "trainer.max_steps=40", "eval.every_n_steps=20", "batch.effective=8", "batch.micro=2", "eval.num_generate=8",
    "logger=none", "checkpoint.export_hf=false", "trainer.enable_progress_bar=false", "eval.harness.every=checkpoint",
    "eval.harness.tasks=[hydralign_arithmetic,sums_mc]", "eval.harness.limit=32"]


def _run(tmp: Path, name: str, overrides: list[str], console: str = "") -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "hydralign", *COMMON, *overrides,
                          f"eval.harness.include_path=[{tmp / 'tasks'}]", f"hydra.run.dir={tmp / name}"],
                         capture_output=True, text=True, cwd=tmp, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert console in out.stdout + out.stderr
    found = {p.stem: json.loads(p.read_text())["results"] for p in sorted((tmp / name / "harness").glob("*.json"))}
    return {step: {task: row[key] for task, row in rows.items() for key in row if key in ("acc,none",
                                                                                          "exact_match,none")}
            for step, rows in found.items()}


def test_two_ranks_evaluate_as_one_process(tmp_path):
    write_tasks(tmp_path / "tasks")
    single = _run(tmp_path, "single", ["hardware=cpu"])
    ddp = _run(tmp_path, "ddp", ["hardware=cpu_2proc"])
    fsdp = _run(tmp_path, "fsdp", ["hardware=cpu_2proc", "hardware.strategy=fsdp"],
                console="2 ranks on their shards)")  # the sharded path, not a gathered copy on rank 0
    assert sorted(single) == ["step000020", "step000040"]
    assert ddp == single and fsdp == single, (single, ddp, fsdp)
    assert single["step000040"]["sums_mc"] > 0  # a number the weights decide, not an empty answer
