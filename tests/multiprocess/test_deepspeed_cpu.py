"""DeepSpeed ZeRO for real on 2 CPU processes (DeepSpeed's CPU accelerator, gloo; Lightning's strategy with its
CUDA-only check lifted, ``hydralign.distributed.deepspeed_cpu``): stages 1, 2 and 3 give one plain process's loss
curve (1e-5), and a run stopped at a checkpoint and resumed (same world size) goes on as the uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.multiprocess.test_fsdp_cpu import COMMON, REPO, _assert_same_curves, _curve

pytestmark = pytest.mark.slow
pytest.importorskip("deepspeed")


def _zero(stage: int) -> list[str]:
    return ["hardware.strategy=deepspeed", f"hardware.zero_stage={stage}", "checkpoint.export_hf=false"]


def test_zero_stages_on_two_cpu_processes_match_one_process(tmp_path):
    single = _curve(tmp_path, "single", 1, ["checkpoint.export_hf=false"])
    for stage in (1, 2, 3):
        _assert_same_curves(_curve(tmp_path, f"zero{stage}", 2, _zero(stage), fsdp=False), single)


@pytest.mark.parametrize("stage", [2, 3])
def test_a_zero_checkpoint_resumes_to_the_uninterrupted_curve(tmp_path, stage):
    single = _curve(tmp_path, "single", 1, ["checkpoint.export_hf=false"])
    run = tmp_path / "zero"
    every = ["checkpoint.every_n_steps=4"]
    before = _curve(tmp_path, "zero", 2, _zero(stage) + every, fsdp=False, stop_at=4)
    assert before["steps"] == 4 and (run / "checkpoints" / "step000004.ckpt").is_dir()  # DeepSpeed's folder
    after = _curve(tmp_path, "zero", 2, _zero(stage) + every + [f"resume={run}"], fsdp=False)
    assert after["steps"] == 8 and sorted(after["train"], key=int) == ["5", "6", "7", "8"]
    for part, curve in (("train", after["train"]), ("val", after["val"])):
        assert max(abs(curve[s] - single[part][s]) for s in curve) < 1e-5, part


def test_zero_sigkilled_mid_step_resumes_auto_to_the_uninterrupted_curve(tmp_path):
    """Both ranks killed with SIGKILL inside step 7 (checkpoints every 2 steps): resume=auto continues the newest
    complete checkpoint (step 6) and ends on the uninterrupted curve."""
    single = _curve(tmp_path, "single", 1, ["checkpoint.export_hf=false"])
    run = tmp_path / "zero"
    every = _zero(2) + ["checkpoint.every_n_steps=2", "hardware=cpu_2proc"]
    killed = subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "torchrun")), "--nproc-per-node",
                             "2", "-m", "tests.multiprocess.curve_job", str(run), *COMMON, *every],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "CURVE_SIGKILL_AT_STEP": "6"})
    assert killed.returncode != 0 and not (run / "curve.json").exists()
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step000006.ckpt"
    after = _curve(tmp_path, "zero", 2, _zero(2) + ["checkpoint.every_n_steps=2", "resume=auto"], fsdp=False)
    assert after["steps"] == 8 and sorted(after["train"], key=int) == ["7", "8"]
    for part, curve in (("train", after["train"]), ("val", after["val"])):
        assert max(abs(curve[s] - single[part][s]) for s in curve) < 1e-5, part
