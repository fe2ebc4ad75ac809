"""Which checkpoint a resume continues: the newest complete one, never a half-written one; sharded
checkpoints only under a strategy that reads them."""

from __future__ import annotations

import pytest
import torch

from hydralign.checkpoints.files import latest_checkpoint
from hydralign.checkpoints.resume import (
    check_newest,
    check_resumable,
    rederive_loop_progress,
    resolve_resume,
)
from hydralign.errors import ConfigError
from tests.helpers import compose_cfg


def _ckpt(path, step, **meta):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "hydralign": meta}, path)
    return path


def test_auto_takes_the_newest_complete_checkpoint(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    assert resolve_resume("auto", tmp_path / "run") == (tmp_path / "run", None)  # nothing yet: a fresh start
    _ckpt(ckpts / "step000004.ckpt", 4)
    _ckpt(ckpts / "step000012.ckpt", 12)
    (ckpts / "step000016.ckpt.tmp").mkdir()  # killed while writing: never picked
    (ckpts / "step000016.ckpt.tmp" / "__0_0.distcp").write_bytes(b"partial")
    _ckpt(ckpts / "best-step000004.ckpt", 4)
    assert latest_checkpoint(ckpts).name == "step000012.ckpt"
    assert resolve_resume("auto", tmp_path / "run")[1].name == "step000012.ckpt"
    assert resolve_resume(str(tmp_path / "run"), tmp_path / "elsewhere") == (tmp_path / "run",
                                                                              ckpts / "step000012.ckpt")
    # an explicit checkpoint, file or sharded folder, is taken as given
    assert resolve_resume(str(ckpts / "step000004.ckpt"), tmp_path / "x")[1].name == "step000004.ckpt"
    sharded = ckpts / "step000020.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"")
    assert resolve_resume(str(sharded), tmp_path / "x") == (tmp_path / "run", sharded)


def test_an_older_runs_last_ckpt_still_resumes(tmp_path):
    last = _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", 7)
    assert latest_checkpoint(last.parent) == last.resolve()


def test_a_run_directory_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_resume(str(tmp_path / "run"), tmp_path / "x")


def test_sharded_checkpoints_need_a_strategy_that_reads_them(tmp_path):
    cfg = compose_cfg([])
    fsdp = tmp_path / "step000004.ckpt"
    fsdp.mkdir()
    torch.save({"hydralign": {"compat": {"seed": cfg.seed}}}, fsdp / "meta.pt")
    with pytest.raises(ConfigError, match="hardware.strategy=fsdp"):
        check_resumable(fsdp, cfg, "ddp")
    assert check_resumable(fsdp, cfg, "fsdp") == {"compat": {"seed": cfg.seed}}
    zero = tmp_path / "ds.ckpt"
    (zero / "checkpoint").mkdir(parents=True)
    with pytest.raises(ConfigError, match="hardware.strategy=deepspeed"):
        check_resumable(zero, cfg, "fsdp")
    for rank in (0, 1):  # written by 2 ranks: continued by 2, refused to 1
        (zero / "checkpoint" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert check_resumable(zero, cfg, "deepspeed", world_size=2) is None
    with pytest.raises(ConfigError, match="optimizer partitions of 2 ranks and this run has 1: resume it with 2"):
        check_resumable(zero, cfg, "deepspeed", world_size=1)


def test_loop_counters_keep_where_the_checkpoint_was_written():
    """Written at a batch's end (completed one behind): Lightning restores its logging step from that."""
    progress = {k: {"ready": 8, "completed": 7, "started": 8, "processed": 8} for k in ("total", "current")}
    epoch = {k: {"ready": 1, "started": 1, "processed": 0, "completed": 0} for k in ("total", "current")}
    ckpt = {"global_step": 4, "loops": {"fit_loop": {"epoch_loop.batch_progress": {**progress, "is_last_batch": False},
                                                     "epoch_progress": epoch}}}
    rederive_loop_progress(ckpt, grad_accum=2, total_steps=10)  # the same accumulation: unchanged
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"] == progress["total"]
    rederive_loop_progress(ckpt, grad_accum=4, total_steps=10)
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"] == {"ready": 16, "completed": 15,
                                                                                 "started": 16, "processed": 16}


def test_loop_counters_follow_the_new_accumulation():
    progress = {k: {"ready": 8, "completed": 8, "started": 8, "processed": 8} for k in ("total", "current")}
    epoch = {k: {"ready": 1, "started": 1, "processed": 1, "completed": 1} for k in ("total", "current")}
    ckpt = {"global_step": 4, "loops": {"fit_loop": {"epoch_loop.batch_progress": {**progress, "is_last_batch": True},
                                                     "epoch_progress": epoch}}}
    rederive_loop_progress(ckpt, grad_accum=4, total_steps=4)  # the run is over: left as it is
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 8
    rederive_loop_progress(ckpt, grad_accum=4, total_steps=10)  # 4 steps of 2 micro-batches -> of 4; 6 to go
    counts = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert counts["total"] == counts["current"] == {"ready": 16, "completed": 16, "started": 16, "processed": 16}
    assert not counts["is_last_batch"] and epoch["total"] == {"ready": 1, "started": 1, "processed": 0,
                                                              "completed": 0}


def test_resuming_in_place_from_an_older_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    older, newest = _ckpt(ckpts / "step000200.ckpt", 200), _ckpt(ckpts / "step000600.ckpt", 600)
    check_newest(newest, run, "auto")  # the newest: fine
    check_newest(tmp_path / "elsewhere.ckpt", run, "x")  # a checkpoint from another folder: not in place
    with pytest.raises(ConfigError, match=r"step 200, but .* has gone on to step 600 \(step000600.ckpt\).*"
                                          r"init_from="):
        check_newest(older, run, f"{run}:step=200")
