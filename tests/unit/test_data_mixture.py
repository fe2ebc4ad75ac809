"""``data.source=mixture`` (hydralign/data/mixture.py, hydralign/plan/mixture.py): three local sources taken by a
fraction and by counts give exactly those counts, the same records for the same data seed in every job and others
for another seed; a count above a source's size is refused with both numbers unless ``repeat``; the plan prints the
shares; each source may map its own field names."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hydralign.data.cache import cache_key, prepare_data
from hydralign.data.kinds import get_kind
from hydralign.data.loading import load_records
from hydralign.errors import ConfigError
from hydralign.models import tokenizer_and_template
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from tests.data_files import write_chat
from tests.helpers import tiny_cfg


@pytest.fixture
def sources(tmp_path):
    a, b = write_chat(tmp_path / "a.jsonl", 100, tag="a"), write_chat(tmp_path / "b.jsonl", 50, seed=1, tag="b")
    c = tmp_path / "c.jsonl"  # its own field name for the conversation
    c.write_text("".join(json.dumps({"conversation": [{"role": "user", "content": f"c{i} hi"},
                                                      {"role": "assistant", "content": "yo"}]}) + "\n"
                         for i in range(30)))
    return a, b, c


def _cfg(tmp_path, sources, takes=("0.5", "20", "30"), extra=()):
    a, b, c = sources
    mixture = (f"[{{source: {a}, take: {takes[0]}}}, {{source: {b}, take: {takes[1]}}}, "
               f"{{source: {c}, take: {takes[2]}, name: cee, messages_field: conversation}}]")
    return tiny_cfg(tmp_path, ["data=jsonl", "data.source=mixture", f"data.mixture={mixture}", "data.val_fraction=0.1",
                               "data.max_seq_len=64", *extra])


def _load(cfg):
    mix: dict[str, int] = {}
    records, _ = load_records(cfg, "sft", mix)
    tags = [r[0]["content"].split()[0] for split in ("train", "val") for r in records[split]]
    return records, mix, tags


def test_fractions_and_counts_give_exact_counts_and_the_same_records_per_seed(tmp_path, sources):
    records, mix, tags = _load(_cfg(tmp_path, sources))
    assert mix == {"a": 50, "b": 20, "cee": 30}
    by_source = Counter(t[0] for t in tags)
    assert by_source == {"a": 50, "b": 20, "c": 30}  # train + held-out val together, before encoding
    assert len(records["val"]) == 10 and len(set(tags)) == 100  # no record twice
    again = _load(_cfg(tmp_path, sources, extra=["lr=0.5", "seed=0"]))[2]  # another job of the sweep
    assert again == tags
    other = _load(_cfg(tmp_path, sources, extra=["data.seed=1"]))[2]
    assert Counter(t[0] for t in other) == by_source
    assert {t for t in other if t[0] == "a"} != {t for t in tags if t[0] == "a"}  # other records of a
    assert {t for t in other if t[0] == "c"} == {t for t in tags if t[0] == "c"}  # c is taken whole


def test_a_count_above_the_source_is_refused_with_both_numbers_unless_repeat(tmp_path, sources):
    with pytest.raises(ConfigError, match=r"data\.mixture\.1 \(b\): take=60 .* the source has \(50\).*"
                                          r"data\.mixture\.1\.repeat=true"):
        _load(_cfg(tmp_path, sources, takes=("0.5", "60", "30")))
    cfg = _cfg(tmp_path, sources, takes=("0.5", "60", "30"))
    cfg.data.mixture[1].repeat = True
    _, mix, tags = _load(cfg)
    b = Counter(t for t in tags if t[0] == "b")
    assert mix["b"] == 60 and len(b) == 50 and sorted(Counter(b.values()).items()) == [(1, 40), (2, 10)]
    with pytest.raises(ConfigError, match="take=2.5 must be a fraction in"):
        make_plan(_cfg(tmp_path, sources, takes=("2.5", "20", "30")))


def test_the_plan_counts_each_share_and_refuses_before_reading(tmp_path, sources):
    cfg = _cfg(tmp_path, sources, takes=("0.5", "20", "1.0"))
    for entry, size in zip(cfg.data.mixture, (100, 50, 30)):
        entry.num_examples = size
    text = format_plan(make_plan(cfg))
    assert "3 sources, 100 records" in text
    assert "50 (fraction 0.5 of 100)" in text
    assert "20 (count 20 of 50)" in text and "30 (fraction 1 of 30)" in text
    assert make_plan(cfg).num_train_examples == 90  # 100 minus the held-out 10
    cfg.data.mixture[1].take = 80
    with pytest.raises(ConfigError, match=r"take=80 asks for more records than the source has \(50\)"):
        make_plan(cfg)
    cfg.data.mixture[1].repeat = True
    assert "80 (count 80 of 50, repeated x1.6)" in format_plan(make_plan(cfg))
    cfg.data.source = "files"
    with pytest.raises(ConfigError, match="data.mixture is set but data.source=files"):
        make_plan(cfg)


def test_each_source_is_logged_with_its_count(tmp_path, sources):
    cfg = _cfg(tmp_path, sources)
    tokenizer, template = tokenizer_and_template(cfg.model)
    prepared = prepare_data(cfg, tokenizer, template, get_kind("sft"))
    metrics = prepared.metrics()
    assert {k: v for k, v in metrics.items() if k.startswith("data/mix/")} == {
        "data/mix/a/examples": 50.0, "data/mix/b/examples": 20.0, "data/mix/cee/examples": 30.0}
    assert metrics["data/cache_hit"] == 0.0 and "mixture: a 50; b 20; cee 30" in prepared.describe()


def test_the_mixture_is_part_of_the_cache_key(tmp_path, sources):
    keys = set()
    for takes in (("0.5", "20", "30"), ("0.5", "21", "30"), ("0.4", "20", "30")):
        cfg = _cfg(tmp_path, sources, takes=takes)
        tokenizer, _ = tokenizer_and_template(cfg.model)
        keys.add(cache_key(cfg, tokenizer, get_kind("sft"))[0])
    assert len(keys) == 3
