"""One answer per job: rank 0 resolves ``init_from=<run>:last`` and the other rank takes its answer. The source
run gains a newer checkpoint after rank 0 has started and before rank 1 does (fake srun starts the tasks apart
and runs ``add_newer`` between them, once rank 0 has answered or 20 s have passed): both ranks use the same
checkpoint, the newer one, since rank 0 answers only once every rank has joined."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydralign.checkpoints import index as checkpoint_index
from hydralign.run.job import run
from tests.fake_slurm import install
from tests.helpers import tiny_cfg

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def add_newer(source: str) -> None:
    """What a source run still training does: a step-6 checkpoint, ``last`` pointing at it."""
    task_out = os.environ["FAKE_SLURM_TASK_OUT"]
    deadline = time.time() + 20
    while time.time() < deadline and "init_from:" not in Path(task_out).read_text():
        time.sleep(0.2)
    ckpts = Path(source) / "checkpoints"
    shutil.copyfile(ckpts / "step000004.ckpt", ckpts / "step000006.ckpt.tmp")
    os.replace(ckpts / "step000006.ckpt.tmp", ckpts / "step000006.ckpt")
    os.symlink("step000006.ckpt", ckpts / "last.tmp")
    os.replace(ckpts / "last.tmp", ckpts / "last.ckpt")
    checkpoint_index.record_checkpoint(ckpts, "step000006.ckpt", 6, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_uses_rank_zeros_reference(tmp_path):
    source = tiny_cfg(tmp_path / "src", ["trainer.max_steps=4", "checkpoint.every_n_steps=2", "logger=none",
                                         "checkpoint.export_hf=false", "eval.num_generate=4"])
    run(source)
    hook = (f"{sys.executable} -c 'from tests.multiprocess.test_one_answer import add_newer; "
            f"add_newer(\"{source.run_dir}\")'")
    env = {**os.environ, **install(tmp_path / "bin", tmp_path / "slurm"), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(_free_port()), "FAKE_SLURM_BETWEEN_TASKS": hook}
    out = subprocess.run([str(tmp_path / "bin" / "srun"), "--output", f"{tmp_path}/task%t.out", sys.executable, "-m", "hydralign",
                          "hardware=cpu_2proc", f"init_from={source.run_dir}:last", "trainer.max_steps=1",
                          "logger=none", "checkpoint.export_hf=false", "eval.num_generate=4",
                          "data.arithmetic.num_train=64", "data.arithmetic.num_val=8", f"run_dir={tmp_path}/run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = [(tmp_path / f"task{t}.out").read_text() for t in (0, 1)]
    assert out.returncode == 0, out.stderr[-2000:] + logs[0][-2000:] + logs[1][-2000:]
    lines = [[ln for ln in log.splitlines() if "init_from:" in ln] for log in logs]
    assert len(lines[0]) == 1 and "step 6" in lines[0][0], lines[0]
    assert len(lines[1]) == 1 and "step 6" in lines[1][0] and "rank 0's answer" in lines[1][0], lines[1]
    assert lines[0][0].split(" (")[0] == lines[1][0].split(" (")[0]  # the same reference -> the same checkpoint
