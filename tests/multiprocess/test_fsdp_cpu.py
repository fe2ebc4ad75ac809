"""FSDP2 (hardware.strategy=fsdp) with 2 CPU processes (gloo, started by torchrun) trains exactly like one
plain process with twice the accumulation: the same loss curve step by step, the policy and DPO's frozen
reference both sharded, and the exported Hugging Face model holds the same whole weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import shared

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMMON = ["trainer.max_steps=8", "eval.every_n_steps=4", "batch.effective=8", "batch.micro=2",
          "data.arithmetic.num_train=256", "data.arithmetic.num_val=32", "data.arithmetic.pad_operands=false",
          "eval.num_generate=8"]


def _curve(tmp: Path, name: str, processes: int, overrides: list[str], fsdp: bool = None,
           stop_at: int = 0) -> dict:
    """The curve of one run; by default 2 processes run FSDP2 and 1 process runs plain. The plain 1-process run of
    COMMON alone (the Hugging Face export does not change a curve) is run once per session and shared."""
    plain = processes == 1 and fsdp is None and not stop_at and set(overrides) <= {"checkpoint.export_hf=false"}
    if plain:
        with shared("plain_curve") as folder:  # every test process of the session: the first one runs it
            if not (folder / "run" / "curve.json").is_file():
                _curve(folder, "run", 1, ["checkpoint.export_hf=false"], fsdp=False)
            return json.loads((folder / "run" / "curve.json").read_text())
    launcher = [sys.executable] if processes == 1 else \
        [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(processes)]
    hardware = ["hardware=cpu"] if processes == 1 else ["hardware=cpu_2proc"]
    if fsdp if fsdp is not None else processes > 1:
        hardware.append("hardware.strategy=fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CURVE_STOP_AT_STEP": str(stop_at)}
    out = subprocess.run([*launcher, "-m", "tests.multiprocess.curve_job", str(tmp / name), *hardware, *COMMON,
                          *overrides], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / name / "curve.json").read_text())


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    return max(abs(a[k] - b[k]) for k in a)


def _assert_same_curves(sharded: dict, single: dict) -> None:
    assert sharded["steps"] == single["steps"] == 8
    assert len(sharded["train"]) == 8 and sorted(sharded["val"], key=int) == ["0", "4", "8"]
    for part in ("train", "val"):
        assert _max_difference(sharded[part], single[part]) < 1e-5, part


def test_fsdp2_two_processes_match_one_process(tmp_path):
    sharded = _curve(tmp_path, "fsdp", 2, ["checkpoint.export_hf=false"])  # 2 x micro 2 x accum 2
    single = _curve(tmp_path, "single", 1, ["checkpoint.export_hf=false"])  # 1 x micro 2 x accum 4
    assert sharded["sharded"] == ["model"] and single["sharded"] == []
    _assert_same_curves(sharded, single)
    ckpts = tmp_path / "fsdp" / "checkpoints"
    assert (ckpts / "last.ckpt").is_dir()  # each rank saved its own shard
    assert [p.is_dir() for p in ckpts.glob("best-step*")] == [True]  # renamed into place once complete
    assert not list(ckpts.glob("*.tmp"))


def test_fsdp2_dpo_shards_the_reference_and_exports_whole_weights(tmp_path):
    from safetensors.torch import load_file

    # Tied embeddings (one tensor in the root's shard) and activation checkpointing per decoder layer.
    dpo = ["method=dpo", "model.tie_word_embeddings=true", "model.gradient_checkpointing=true",
           "checkpoint.export_hf=true"]
    sharded = _curve(tmp_path, "fsdp", 2, dpo)
    single = _curve(tmp_path, "single", 1, dpo)
    assert sharded["sharded"] == ["model", "reference"]
    _assert_same_curves(sharded, single)
    a = load_file(str(tmp_path / "fsdp" / "hf_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "hf_model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_fsdp2_lora_dpo_matches_one_process(tmp_path):
    """LoRA under FSDP2: frozen base and trainable adapters in the same shards; DPO's reference is the
    sharded policy with its adapters off (no copy). Dropout off: its masks differ with the rank split.
    With the throughput options: gathered layers kept from forward to backward, one reduce-scatter a step."""
    from safetensors.torch import load_file

    lora = ["method=dpo", "peft=lora", "peft.r=8", "peft.dropout=0", "checkpoint.export_hf=true"]
    sharded = _curve(tmp_path, "fsdp", 2, lora + ["hardware.fsdp_reshard_after_forward=false",
                                                  "hardware.fsdp_accumulate_unsharded=true"])
    single = _curve(tmp_path, "single", 1, lora)
    assert sharded["sharded"] == ["model"]
    _assert_same_curves(sharded, single)
    a = load_file(str(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_fsdp2_resumes_under_another_world_size_both_ways(tmp_path):
    """Saved by 2 ranks, continued by 1 (and the reverse): the sharded checkpoint is resharded on load, the
    effective batch kept with the accumulation re-derived (2 x 2 <-> 1 x 4 micro-batches of 2), and the
    curve goes on as the uninterrupted run's."""
    single = _curve(tmp_path, "single", 1, [])
    for first, then in ((2, 1), (1, 2)):
        name = f"{first}to{then}"
        run = tmp_path / name
        before = _curve(tmp_path, name, first, ["checkpoint.every_n_steps=4"], fsdp=True, stop_at=4)
        assert before["steps"] == 4 and (run / "checkpoints" / "step000004.ckpt" / "meta.pt").is_file()
        after = _curve(tmp_path, name, then, ["checkpoint.every_n_steps=4", f"resume={run}"], fsdp=True)
        assert after["steps"] == 8 and sorted(after["train"], key=int) == ["5", "6", "7", "8"]
        assert after["sharded"] == ["model"]
        for part, curve in (("train", after["train"]), ("val", after["val"])):
            assert max(abs(curve[s] - single[part][s]) for s in curve) < 1e-5, (name, part)
        assert max(abs(before["train"][s] - single["train"][s]) for s in before["train"]) < 1e-5, name
        assert (run / "checkpoints" / "last.ckpt").resolve().name == "step000008.ckpt"
