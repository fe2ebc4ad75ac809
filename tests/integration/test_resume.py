"""An interrupted run resumes from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hydralign.run.job import run
from tests.helpers import tiny_cfg

COMMON = ["trainer.max_steps=12", "eval.every_n_steps=4", "checkpoint.every_n_steps=4", "logger=none",
          "eval.num_generate=8", "checkpoint.export_hf=false", "batch.effective=8", "batch.micro=4"]


class Crash(Callback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated node failure")


class Steps(Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.losses[trainer.global_step] = float(module.last_window_loss)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    ref_steps = Steps()
    ref = run(tiny_cfg(tmp_path / "a", COMMON), callbacks=[ref_steps])

    crashed = tiny_cfg(tmp_path / "b", COMMON)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        run(crashed, callbacks=[Crash(at_step=6)])
    run_dir = tmp_path / "b" / "run"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    resumed_steps = Steps()
    again = tiny_cfg(tmp_path / "c", COMMON + [f"resume={run_dir}"])
    out = run(again, callbacks=[resumed_steps])
    assert sorted(resumed_steps.losses) == list(range(4, 12))  # continues after step 4, not from 0
    for step, loss in resumed_steps.losses.items():
        assert loss == pytest.approx(ref_steps.losses[step], abs=1e-5), step
    assert out["val/loss"] == pytest.approx(ref["val/loss"], abs=1e-5)
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 12


def test_resume_continues_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    with_mlflow = [c for c in COMMON if c != "logger=none"]
    cfg = tiny_cfg(tmp_path / "b", with_mlflow)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        run(cfg, callbacks=[Crash(at_step=6)])
    run_dir = tmp_path / "b" / "run"
    run_id = (run_dir / "mlflow_run_id").read_text()
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED" and "simulated node failure" in failed.data.tags["error"]

    again = tiny_cfg(tmp_path / "b", with_mlflow + [f"resume={run_dir}"])
    run(again)
    assert (run_dir / "mlflow_run_id").read_text() == run_id
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED" and done.data.tags["trial_state"] == "COMPLETE"
    steps = [m.step for m in client.get_metric_history(run_id, "val/loss")]
    assert steps == [0, 4, 8, 12]  # before the crash, then after resuming, in one run


def test_time_based_checkpoints_keep_the_newest_k(tmp_path):
    """checkpoint.every_n_minutes alone: a checkpoint whenever the interval has passed at a step's end (here
    at every step), the newest keep_last_k kept, last.ckpt pointing at the newest, nothing half-written."""
    cfg = tiny_cfg(tmp_path, ["trainer.max_steps=5", "eval.every_n_steps=5", "logger=none", "eval.num_generate=4",
                              "checkpoint.export_hf=false", "checkpoint.save_last=false",
                              "checkpoint.every_n_minutes=0.000001", "checkpoint.keep_last_k=2"])
    run(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step000004.ckpt", "step000005.ckpt"]
    assert (ckpts / "last.ckpt").is_symlink() and (ckpts / "last.ckpt").resolve().name == "step000005.ckpt"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list(ckpts.glob("*.tmp"))


def test_an_incompatible_checkpoint_is_refused_naming_the_keys(tmp_path):
    from hydralign.errors import ConfigError

    run(tiny_cfg(tmp_path / "a", COMMON + ["trainer.max_steps=4"]))
    run_dir = tmp_path / "a" / "run"
    other = tiny_cfg(tmp_path / "b", COMMON + [f"resume={run_dir}", "model.hidden_size=64", "batch.effective=16"])
    with pytest.raises(ConfigError) as err:
        run(other)
    message = str(err.value)
    assert "model.hidden_size: 128 in the checkpoint, 64 now" in message
    assert "batch.effective: 8 in the checkpoint, 16 now" in message and "step000004.ckpt" in message
    assert "lr" not in message.split("(")[1]  # only what differs is named
    # what may change (learning rate, length, evaluation cadence) does not stop a resume
    fine = tiny_cfg(tmp_path / "c", COMMON + [f"resume={run_dir}", "lr=5e-4", "trainer.max_steps=6"])
    assert run(fine)["train/steps"] == 6
