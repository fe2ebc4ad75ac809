"""A run on a cache hit trains exactly as with ``data.cache=false``: the same batches and, bitwise, the same losses
for 20 steps; and it logs the hit, the data stage's seconds and the same data counts."""

from __future__ import annotations

import hashlib
import json

from lightning.pytorch.callbacks import Callback

from hydralign.run.job import run
from tests.data_files import write_chat
from tests.helpers import tiny_cfg


class Steps(Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.batches: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        h = hashlib.sha256()
        for key in ("input_ids", "labels", "attention_mask"):
            h.update(batch[key].numpy().tobytes())
        self.batches.append(h.hexdigest())

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.losses.append(float(module.last_window_loss))


def test_hit_trains_bitwise_like_no_cache_and_logs_it(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", 400)
    common = ["data=jsonl", f"data.train_files=[{data}]", "data.val_fraction=0.05", "data.max_seq_len=48",
              "trainer.max_steps=20", "eval.every_n_steps=20", "eval.at_start=false", "eval.num_generate=4",
              "batch.effective=8", "batch.micro=4", "checkpoint.export_hf=false", "checkpoint.save_last=false"]
    seen = {}
    for name, extra in (("miss", []), ("hit", []), ("off", ["data.cache=false"])):
        cfg = tiny_cfg(tmp_path / name, common + extra)
        cfg.data.cache_dir = str(tmp_path / "tokenized")  # one cache for the three runs
        steps = Steps()
        metrics = run(cfg, callbacks=[steps])
        seen[name] = steps, metrics, json.loads((tmp_path / name / "run" / "metrics.json").read_text())
    assert len(seen["off"][0].losses) == 20
    for name in ("miss", "hit"):
        assert seen[name][0].batches == seen["off"][0].batches, name
        assert seen[name][0].losses == seen["off"][0].losses, name  # bitwise: == on floats
    assert seen["hit"][1]["val/loss"] == seen["off"][1]["val/loss"]
    assert len(list((tmp_path / "tokenized").glob("*/manifest.json"))) == 1

    import mlflow

    logged = {}
    for name in ("miss", "hit", "off"):
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name}/mlflow.db")
        run_id = (tmp_path / name / "run" / "mlflow_run_id").read_text().strip()
        logged[name] = client.get_run(run_id).data.metrics
    assert (logged["miss"]["data/cache_hit"], logged["hit"]["data/cache_hit"]) == (0.0, 1.0)
    assert "data/cache_hit" not in logged["off"] and logged["off"]["data/prepare_seconds"] > 0
    counts = [k for k in logged["off"] if k.startswith(("data/train_", "data/val_"))]
    assert "data/train_truncated" in counts
    assert all(logged["miss"][k] == logged["hit"][k] == logged["off"][k] for k in counts)


def test_prepare_builds_what_the_run_then_hits(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    data = write_chat(tmp_path / "chat.jsonl", 200)
    overrides = ["data=jsonl", f"data.train_files=[{data}]", "data.val_fraction=0.05", "data.max_seq_len=48"]

    def hydralign(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})

    prepared = hydralign("hydralign.prepare", *overrides)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    key = prepared.stdout.split("key")[1].split()[0]
    folder = tmp_path / "outputs" / "cache" / "tokenized" / key
    assert f"built {folder}" in prepared.stdout and (folder / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "outputs"]  # no run folder of its own
    trained = hydralign("hydralign", *overrides, "lr=0.01", "trainer.max_steps=2", "eval.every_n_steps=2",
                        "batch.effective=8", "eval.num_generate=2", "logger=none", "checkpoint.export_hf=false",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert f"cache hit: {folder} (key {key}" in trained.stdout
    refused = hydralign("hydralign.prepare", "data=jsonl", "data.source=mixture",
                        f"data.mixture=[{{source: {data}, take: 500, num_examples: 200}}]", "data.val_fraction=0.05")
    assert refused.returncode == 2 and "take=500 asks for more records than the source has (200)" in refused.stderr
