"""Generator processes beside the learners (issue 19), for real on CPU: ``hardware=cpu_2proc
hardware.generator_devices=1`` is 1 learner + 1 generator process, weights broadcast over gloo.

- max_staleness=0 samples exactly what the single-process run samples (the same rewards, lengths and truncations
  at every step: the same completions) and trains to the same losses (1e-5); the importance ratio is 1.
- After every broadcast the generator's weights are the learner's (SHA-256 of the bytes, HYDRALIGN_VERIFY_SYNC=1).
- max_staleness=1 samples rollout batch t with the weights of t - 1: rollout/staleness 1, the ratio moves off 1;
  under FSDP2 learners (2 learners + 1 generator) the broadcast weights are the whole, gathered tensors; a resumed
  run samples its in-flight batch again from the restored weights.

From random init with a format reward (the completion starts with a digit: about half of them), so advantages and
gradients are not zero and the weights move every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = 4
TASK = ["method=grpo", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=512", "data.arithmetic.num_val=16",
        "checkpoint.save_last=false", "checkpoint.export_hf=false", "trainer.log_every_n_steps=1",
        "eval.max_new_tokens=4", "method.prompts_per_step=8", "method.num_generations=4", "batch.micro=16",
        f"trainer.max_steps={STEPS}", "eval.num_generate=0", "eval.at_start=false", "checkpoint.monitor=val/loss",
        "checkpoint.mode=min", "optimized_metric=val/loss", f"eval.every_n_steps={STEPS}", "lr=1e-3",
        "+method.rewards.format=1.0", "method.rewards.exact_answer=0.0", "method.format_pattern='[0-9].*'", "trainer.enable_progress_bar=false"]
KEYS = ("train/loss", "rewards/mean", "completion_length", "truncated_fraction")
REPO = Path(__file__).resolve().parents[2]


def _run(tmp: Path, name: str, *overrides: str, launcher: tuple[str, ...] = (), env: dict[str, str] | None = None,
         cwd: Path = REPO) -> dict[str, dict[int, float]]:
    """One run's metrics by step. ``launcher``: what starts ``-m hydralign`` (torchrun's module and flags); ``env``:
    more variables; ``cwd``: where it runs (this checkout is on PYTHONPATH wherever that is)."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp / name}.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRALIGN_VERIFY_SYNC": "1", "PYTHONPATH": str(REPO), **(env or {})}
    out = subprocess.run([sys.executable, *launcher, "-m", "hydralign", *TASK, *overrides, "logger=mlflow",
                          f"logger.tracking_uri={store}", f"hydra.run.dir={tmp / name}"],  # (run_dir, if given, wins)
                         capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run = ([r for r in runs if "mlflow.parentRunId" in r.data.tags] or runs)[0]  # a multirun's job: its child run
    keys = [k for k in run.data.metrics if not k.startswith(("val/", "best/"))]
    return {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys}


def _synced(tmp: Path, name: str) -> list[int]:
    """The versions whose broadcast every generator confirmed (checksum equal to learner 0's)."""
    lines = (tmp / name / "launch" / "weight_sync.jsonl").read_text().splitlines()
    return [json.loads(line)["version"] for line in lines]


def test_staleness_0_reproduces_the_single_process_run_and_every_sync_is_exact(tmp_path):
    single = _run(tmp_path, "single", "hardware=cpu")
    apart = _run(tmp_path, "apart", "hardware=cpu_2proc", "hardware.generator_devices=1")
    steps = list(range(1, STEPS + 1))
    assert sorted(single["train/loss"]) == sorted(apart["train/loss"]) == steps
    assert len({round(v, 6) for v in single["train/loss"].values()}) > 1  # a real signal: the loss moves
    for key in KEYS[1:]:  # the same completions at every step: the same rewards, lengths and truncations
        assert [apart[key][s] for s in steps] == [single[key][s] for s in steps], key
    for s in steps:
        assert apart["train/loss"][s] == pytest.approx(single["train/loss"][s], abs=1e-5)
        assert apart["is/ratio_mean"][s] == pytest.approx(1.0, abs=1e-5)
        assert apart["is/clipped_fraction"][s] == 0.0 and apart["rollout/staleness"][s] == 0.0
    for key in ("time/generation_s", "time/training_s", "time/waiting_s", "time/weight_sync_s"):
        assert set(apart[key]) == set(steps), key
    assert _synced(tmp_path, "apart") == list(range(STEPS))  # version 0, then after each step but the last


def test_staleness_1_under_fsdp2_corrects_for_it_syncs_whole_weights_and_resumes_from_the_restored_ones(tmp_path):
    """2 FSDP2 learners + 1 generator, max_staleness=1, stopped after 2 steps and resumed to 4 (resume=auto):
    - batch t is sampled with the weights of t - 1 (rollout/staleness 1), the ratio moves off 1 and the tight
      token_mask bound zeroes some tokens;
    - the learners gather each tensor and learner 0 broadcasts it: what the generator holds after each broadcast is
      learner 0's (checksums), and at version 0 it is the initial model built here in one piece (whole tensors);
    - the checkpoint records its policy version; the resumed run samples batch 2 (in flight at the stop: it was
      sampled with version 1) again from the restored weights (version 2, staleness 0, ratio 1), then batch 3 one
      step behind again."""
    import torch

    from hydralign.models import build_model, tokenizer_and_template
    from hydralign.rollout_workers.channel import checksum
    from tests.helpers import compose_cfg

    setup = ["hardware=cpu_2proc", "hardware.devices_per_node=3", "hardware.strategy=fsdp",
             "hardware.generator_devices=1", "method.max_staleness=1", "method.importance_sampling_mode=token_mask",
             "method.importance_sampling_clip_max=1.05", "eval.every_n_steps=2", "checkpoint.save_last=true",
             f"run_dir={tmp_path / 'stale'}"]
    _run(tmp_path, "stale", *setup, "trainer.max_steps=2")
    meta = torch.load(tmp_path / "stale" / "checkpoints" / "step000002.ckpt" / "meta.pt", weights_only=False)
    assert meta["hydralign"]["policy_version"] == 2 and meta["hydralign"]["max_staleness"] == 1
    run = _run(tmp_path, "stale", *setup, "trainer.max_steps=4", "resume=auto")
    assert [run["rollout/staleness"][s] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    for s in (1, 3):  # sampled with the weights being trained
        assert run["is/ratio_mean"][s] == pytest.approx(1.0, abs=1e-4) and run["is/clipped_fraction"][s] == 0.0
    for s in (2, 4):  # sampled one step behind
        assert abs(run["is/ratio_mean"][s] - 1.0) > 1e-3 and run["is/clipped_fraction"][s] > 0
    lines = [json.loads(line) for line in (tmp_path / "stale" / "launch" / "weight_sync.jsonl").read_text().splitlines()]
    assert [x["version"] for x in lines] == [0, 2]  # batches 0, 1 need version 0; after the resume 2, 3 need 2
    cfg = compose_cfg(TASK)
    tokenizer, _ = tokenizer_and_template(cfg.model)
    assert lines[0]["sha256"] == checksum(build_model(cfg.model, tokenizer, cfg.seed, cfg.peft).state_dict().values())
