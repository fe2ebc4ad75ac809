"""Checkpoint references: every selector, each error, MLflow run ids; picked from the run's recorded index."""

from __future__ import annotations

import json

import pytest
import torch

from hydralign.checkpoints import index as checkpoint_index
from hydralign.checkpoints import references as lineage
from hydralign.errors import ConfigError

# step -> validation metrics of a fake run: val/loss is lowest at step 200 (the later steps overfit)
VALIDATIONS = {0: {"val/loss": 2.0, "val/exact_match": 0.0}, 200: {"val/loss": 0.5, "val/exact_match": 0.6},
               400: {"val/loss": 0.7, "val/exact_match": 0.7}, 600: {"val/loss": 0.9, "val/exact_match": 0.65}}


@pytest.fixture(autouse=True)
def _fresh_memo():
    lineage._MEMO.clear()
    yield
    lineage._MEMO.clear()


def _run(tmp_path, monitor="val/loss", mode="min"):
    run = tmp_path / "sft"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    (run / "plan.json").write_text("{}")
    (run / "mlflow_run_id").write_text("abc123")
    for step, metrics in VALIDATIONS.items():
        checkpoint_index.record_validation(ckpts, step, metrics)
    for name, step in [("step000400.ckpt", 400), ("step000600.ckpt", 600), ("best-step000200.ckpt", 200)]:
        torch.save({"global_step": step}, ckpts / name)
        checkpoint_index.record_checkpoint(ckpts, name, step, steps_per_epoch=200, monitor=monitor, mode=mode)
    return run


def test_selectors_pick_from_the_index(tmp_path):
    run = _run(tmp_path)
    best = lineage.resolve_reference(f"{run}:best")
    assert best.path.name == "best-step000200.ckpt" and best.kind == "ckpt" and best.run_dir == run
    assert best.lineage == {"source_run_id": "abc123", "selector": "best", "step": "200", "metric": "val/loss",
                            "metric_value": "0.5", "path": str(run / "checkpoints" / "best-step000200.ckpt")}
    assert lineage.resolve_reference(f"{run}:best=val/exact_match,max").path.name == "step000400.ckpt"
    assert lineage.resolve_reference(f"{run}:last").path.name == "step000600.ckpt"
    assert lineage.resolve_reference(f"{run}:step=400").lineage["step"] == "400"
    assert lineage.resolve_reference(f"{run}:epoch=3").path.name == "step000600.ckpt"  # 200 steps per epoch
    assert lineage.resolve_weights(f"{run}:epoch=1") == run / "checkpoints" / "best-step000200.ckpt"
    # deleted since (keep-last-K): no longer offered
    (run / "checkpoints" / "step000600.ckpt").unlink()
    lineage._MEMO.clear()
    assert lineage.resolve_reference(f"{run}:last").path.name == "step000400.ckpt"


def test_a_run_without_a_selector_gives_its_exported_model(tmp_path):
    run = _run(tmp_path)
    assert lineage.resolve_reference(str(run)).path.name == "step000600.ckpt"  # nothing exported: the newest
    (run / "hf_model").mkdir()
    (run / "hf_model" / "model.safetensors").write_bytes(b"")
    lineage._MEMO.clear()
    found = lineage.resolve_reference(str(run))
    assert found.kind == "hf" and found.lineage["selector"] == "hf_model"


def test_a_selector_that_matches_nothing_lists_what_exists(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(ConfigError) as err:
        lineage.resolve_reference(f"{run}:step=300", what="method.teacher_from")
    message = str(err.value)
    assert message.startswith(f"method.teacher_from={run}:step=300: no checkpoint at step 300")
    assert "best-step000200.ckpt (step 200, epoch 1)" in message and "step000600.ckpt (step 600, epoch 3)" in message
    with pytest.raises(ConfigError, match=r"no checkpoint has a validation value of val/bleu; .*"
                                          r"step000400.ckpt \(step 400, epoch 2\)"):
        lineage.resolve_reference(f"{run}:best=val/bleu,max")


def test_references_that_cannot_hold_a_selector_or_do_not_exist(tmp_path):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    assert lineage.resolve_reference(str(model)).kind == "hf"
    with pytest.raises(ConfigError, match="needs a hydralign run folder"):
        lineage.resolve_reference(f"{model}:best")
    with pytest.raises(ConfigError, match="does not exist"):
        lineage.resolve_reference(str(tmp_path / "missing") + ":last")
    run = _run(tmp_path)
    with pytest.raises(ConfigError, match="give the run folder"):
        lineage.resolve_reference(f"{run}/checkpoints/step000400.ckpt:best")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a Lightning .ckpt"):
        lineage.resolve_reference(str(tmp_path / "notes.txt"))
    # a colon that starts no selector stays part of the path
    assert lineage.split_reference("/data/a:b/run") == ("/data/a:b/run", None)
    assert lineage.split_reference("runs:/abc:step=5") == ("runs:/abc", "step=5")


def test_best_without_a_recorded_monitor_asks_for_one(tmp_path):
    run = _run(tmp_path, monitor=None)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert "monitor" not in index
    with pytest.raises(ConfigError, match=r":best=<metric>,<min\|max>"):
        lineage.resolve_reference(f"{run}:best")


def test_an_mlflow_run_id_finds_its_run_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    run = _run(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("x"), tags={"run_dir": str(run)}).info.run_id
    found = lineage.resolve_reference(f"runs:/{run_id}:step=400", uri)
    assert found.path == run / "checkpoints" / "step000400.ckpt" and found.lineage["source_run_id"] == run_id
    with pytest.raises(ConfigError, match="no MLflow run deadbeef"):
        lineage.resolve_reference("runs:/deadbeef:best", uri)


def test_a_hub_id_is_fetched_into_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub

    cached = tmp_path / "hub" / "gpt2"
    cached.mkdir(parents=True)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or str(cached))
    found = lineage.resolve_reference("openai-community/gpt2", what="method.teacher_from")
    assert found.kind == "hf" and found.path == cached and asked == ["openai-community/gpt2"]
    assert found.lineage == {"selector": "hub", "path": "openai-community/gpt2"}
    with pytest.raises(ConfigError, match="hub id"):
        lineage.resolve_reference("openai-community/gpt2:best")

    def offline(repo, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    lineage._MEMO.clear()
    with pytest.raises(ConfigError, match=r"init_from=org/missing: not a local path, and fetching it .*\(OSError"):
        lineage.resolve_reference("org/missing")


def test_last_falls_back_to_what_is_on_disk(tmp_path):
    """An older run without an index (only last.ckpt), and a run killed between writing a checkpoint and
    recording it: :last is the newest complete checkpoint on disk. A real path with a colon stays a path."""
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "plan.json").write_text("{}")
    torch.save({"global_step": 7}, old / "checkpoints" / "last.ckpt")
    found = lineage.resolve_reference(f"{old}:last")
    assert found.path == (old / "checkpoints" / "last.ckpt").resolve() and found.lineage["step"] == "7"
    run = _run(tmp_path)
    torch.save({"global_step": 800}, run / "checkpoints" / "step000800.ckpt")  # not in the index yet
    lineage.forget()
    assert lineage.resolve_reference(f"{run}:last").lineage["step"] == "800"
    odd = tmp_path / "exp:last"
    odd.mkdir()
    (odd / "model.safetensors").write_bytes(b"")
    assert lineage.split_reference(str(odd)) == (str(odd), None)
    assert lineage.resolve_reference(str(odd)).kind == "hf"
