"""The reference log-prob cache: computed once across concurrent processes, validated on read,
recomputed when partial or corrupt, keyed by what changes the numbers and not by beta/lr/seed."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from hydralign.methods import reference_cache as rc

SIZES = {"train": 3, "val": 2}


def _tensors(offset: float = 0.0) -> dict[str, torch.Tensor]:
    return {"train": torch.arange(6, dtype=torch.float32).reshape(3, 2) + offset,
            "val": -torch.arange(4, dtype=torch.float32).reshape(2, 2) - offset}


def _worker(cache_dir: str, log: str, out: str) -> None:
    def compute():
        with open(log, "a") as fh:
            fh.write("computed\n")
        time.sleep(1.0)  # long enough for the other process to be waiting on the lock
        return _tensors()

    tensors, report = rc.load_or_compute(Path(cache_dir), "k1", {"what": "test"}, SIZES, compute)
    torch.save({"tensors": tensors, "hit": report["hit"]}, out)


def test_two_concurrent_processes_compute_once(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(log), str(tmp_path / f"out{i}.pt")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("computed") == 1
    outs = [torch.load(tmp_path / f"out{i}.pt", weights_only=True) for i in range(2)]
    assert sorted(o["hit"] for o in outs) == [False, True]
    for o in outs:
        torch.testing.assert_close(o["tensors"]["train"], _tensors()["train"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k1.json", "k1.lock", "k1.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key", "wrong_size"])
def test_a_damaged_or_stale_cache_is_recomputed_never_used(tmp_path, damage):
    calls = []

    def compute():
        calls.append(1)
        return _tensors(offset=len(calls))

    first, report = rc.load_or_compute(tmp_path, "k1", {}, SIZES, compute)
    assert not report["hit"]
    path = tmp_path / "k1.safetensors"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "other_key":  # a file written under another key, renamed by hand
        rc.load_or_compute(tmp_path, "k2", {}, SIZES, compute)
        (tmp_path / "k2.safetensors").replace(path)
    again, report = rc.load_or_compute(tmp_path, "k1", {}, {"train": 4, "val": 2} if damage == "wrong_size"
                                       else SIZES, compute if damage != "wrong_size" else
                                       lambda: {"train": torch.zeros(4, 2), "val": torch.zeros(2, 2)})
    assert not report["hit"] and report["recomputed_stale"]
    hit, report = rc.load_or_compute(tmp_path, "k1", {}, {"train": 4, "val": 2} if damage == "wrong_size" else SIZES,
                                     lambda: pytest.fail("a valid cache must be read, not recomputed"))
    assert report["hit"]
    torch.testing.assert_close(hit["train"], again["train"])


def test_a_flipped_value_fails_the_checksum(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    rc.load_or_compute(tmp_path, "k1", {}, SIZES, _tensors)
    path = tmp_path / "k1.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    tensors["train"][0, 0] += 1.0  # same key, same shapes, different numbers
    save_file(tensors, str(path), metadata=meta)
    _, report = rc.load_or_compute(tmp_path, "k1", {}, SIZES, _tensors)
    assert not report["hit"]


def test_key_ignores_beta_lr_and_loss_but_not_data_or_weights(make_cfg):
    from hydralign.data.chat import get_template
    from hydralign.data.module import PostTrainingData
    from hydralign.models import build_tokenizer

    def key(overrides):
        cfg = make_cfg(["method=dpo", "data.arithmetic.num_train=64", "data.arithmetic.num_val=16"] + overrides)
        template = get_template(cfg.model.chat_template)
        data = PostTrainingData(cfg, build_tokenizer(cfg.model, template), template, kind="preference", unit="pairs")
        data.load()
        return rc.cache_key(cfg, data)[0]

    base = key([])
    assert key(["method.beta=0.5", "lr=3e-5", "method.loss_type=ipo", "method.label_smoothing=0.1"]) == base
    assert key(["data.max_seq_len=30"]) != base  # truncation changes the tokens
    assert key(["data.arithmetic.num_train=65"]) != base  # other data
    assert key(["model.hidden_size=64", "model.intermediate_size=128"]) != base  # other reference weights
    assert key(["seed=1"]) != base  # random init and synthetic data both follow the seed
