"""The tokenized cache across processes: two jobs that start together build it once (the other waits on the lock
and maps the result), and the two ranks of a 2-process job map the one folder rank 0 built."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.data_files import write_chat
from tests.helpers import REPO

pytestmark = pytest.mark.slow

JOB = """
import json, sys, time
from pathlib import Path
from tests.helpers import tiny_cfg
from hydralign.data.cache import ensure_cache
from hydralign.data.kinds import get_kind
from hydralign.models import tokenizer_and_template
tmp, data, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cfg = tiny_cfg(tmp, ["data=jsonl", f"data.train_files=[{data}]", "data.val_fraction=0.05", "data.max_seq_len=64"])
cfg.data.cache_dir = str(go.parent / "tokenized")
tokenizer, template = tokenizer_and_template(cfg.model)
while not go.exists():  # both jobs start the cache at the same moment
    time.sleep(0.01)
print(json.dumps(ensure_cache(cfg, tokenizer, template, get_kind("sft"))))
"""


def test_two_jobs_started_together_build_once(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", 20000)
    go = tmp_path / "go"
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / f"job{i}"), str(data), str(go)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    time.sleep(8)  # both have imported everything and wait for the start
    go.touch()
    reports = []
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in reports) == [False, True]  # one built, the other found it
    assert reports[0]["path"] == reports[1]["path"]
    waiter = next(r for r in reports if r["hit"])
    assert waiter["waited_s"] > 0.05  # it waited on the lock while the other built, then used its folder
    assert len(list((tmp_path / "tokenized").iterdir())) == 2  # the folder and its lock file, no second copy


def test_two_ranks_map_the_folder_rank_zero_built(tmp_path):
    data = write_chat(tmp_path / "chat.jsonl", 400)
    out = subprocess.run([sys.executable, "-m", "hydralign", "hardware=cpu_2proc", "data=jsonl",
                          f"data.train_files=[{data}]", "data.val_fraction=0.05", "data.max_seq_len=48",
                          f"data.cache_dir={tmp_path / 'tokenized'}", "trainer.max_steps=2", "eval.every_n_steps=2",
                          "batch.effective=8", "batch.micro=2", "eval.num_generate=4", "eval.max_new_tokens=4",
                          "logger=none", "checkpoint.export_hf=false", "trainer.enable_progress_bar=false",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    folders = [p for p in (tmp_path / "tokenized").iterdir() if p.is_dir()]
    assert len(folders) == 1
    assert f"cache miss, built: {folders[0]}" in out.stdout
    rank1 = (tmp_path / "run" / "launch" / "rank1.log").read_text()
    assert f"rank 1 maps the tokenized cache rank 0 built: {folders[0]}" in rank1
