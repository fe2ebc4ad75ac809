"""A stop signal ends a run at an optimizer-step boundary with a checkpoint of that step, and ``resume=auto``
continues it to the uninterrupted run's weights and loss curve, in the same MLflow run, every step logged once.
SIGTERM (a preemption, ``kill``) and SIGUSR1 (SLURM's warning before a time limit) arrive mid-step, between two
micro-batches of one accumulation window, as a real signal to this process."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from hydralign.distributed.preemption import Preempted
from hydralign.run.job import run
from tests.helpers import tiny_cfg

COMMON = ["trainer.max_steps=10", "eval.every_n_steps=4", "checkpoint.every_n_steps=4", "checkpoint.keep_last_k=3",
          "eval.num_generate=8", "checkpoint.export_hf=false", "batch.effective=8", "batch.micro=4",
          "trainer.log_every_n_steps=1"]


class SignalMidStep(Callback):
    """Sends ``sig`` to this process after the first micro-batch of step ``step`` + 1."""

    def __init__(self, step: int, sig: int):
        self.step, self.sig, self.sent = step, sig, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not batch["window_last"] and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)


def _history(cfg, key: str) -> dict[int, list[float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = open(os.path.join(cfg.run_dir, "mlflow_run_id")).read().strip()
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, key):
        out.setdefault(m.step, []).append(m.value)
    return out


def _weights(cfg) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(cfg.run_dir, "checkpoints", "last.ckpt"), weights_only=True)["state_dict"]


@pytest.mark.parametrize("sig,stop_step", [(signal.SIGTERM, 5), (signal.SIGUSR1, 4)], ids=["sigterm", "sigusr1"])
def test_a_signal_checkpoints_the_step_and_resume_auto_continues_it(tmp_path, sig, stop_step):
    from mlflow.tracking import MlflowClient

    ref = tiny_cfg(tmp_path / "ref", COMMON)
    run(ref)
    cfg = tiny_cfg(tmp_path / "cut", COMMON)
    # Sent during step stop_step (between its micro-batches): that step completes, its checkpoint is written
    # (at step 4 after the step's validation), and the run stops before the next step.
    with pytest.raises(Preempted) as stopped:
        run(cfg, callbacks=[SignalMidStep(stop_step - 1, sig)])
    assert stopped.value.step == stop_step and stopped.value.warned == (sig == signal.SIGUSR1)
    assert signal.Signals(sig).name in str(stopped.value)
    ckpts = tmp_path / "cut" / "run" / "checkpoints"
    assert (ckpts / "last.ckpt").resolve().name == f"step{stop_step:06d}.ckpt"
    assert signal.getsignal(sig) is not None and not callable(getattr(signal.getsignal(sig), "__self__", None))
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp_path / "cut" / "run" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(run_id).data.tags["trial_state"] == "PREEMPTED"
    assert max(_history(cfg, "train/loss")) == stop_step  # nothing logged after the step it stopped at

    resumed = tiny_cfg(tmp_path / "cut", COMMON + ["resume=auto"])
    run(resumed)
    assert (tmp_path / "cut" / "run" / "mlflow_run_id").read_text().strip() == run_id  # the same MLflow run
    assert client.get_run(run_id).info.status == "FINISHED"
    a, b = _weights(ref), _weights(resumed)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    ref_loss, loss = _history(ref, "train/loss"), _history(resumed, "train/loss")
    assert sorted(loss) == sorted(ref_loss) == list(range(1, 11))
    assert all(len(v) == 1 for v in loss.values())  # every step once
    assert max(abs(loss[s][0] - ref_loss[s][0]) for s in ref_loss) < 1e-6
    assert sorted(_history(resumed, "val/loss")) == sorted(_history(ref, "val/loss"))
    assert all(len(v) == 1 for v in _history(resumed, "val/loss").values())


def test_a_signal_before_the_first_step_stops_with_nothing_to_save(tmp_path):
    class Early(Callback):
        def on_fit_start(self, trainer, module):
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_cfg(tmp_path, COMMON + ["logger=none"])
    with pytest.raises(Preempted) as stopped:
        run(cfg, callbacks=[Early()])
    assert stopped.value.step == 0 and stopped.value.checkpoint is None
    assert not list((tmp_path / "run" / "checkpoints").glob("step*"))
