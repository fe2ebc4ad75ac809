"""The tokenized-data cache (hydralign/data/cache.py): its key changes with what changes the tokens and with nothing
else, a hit gives the items and counts of a fresh encoding, and a damaged folder is rebuilt, never used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hydralign.data.cache import cache_key, ensure_cache, open_cache, prepare_data
from hydralign.data.kinds import get_kind
from hydralign.data.loading import encode_data
from hydralign.methods.specs import get_method
from hydralign.models import char_tokenizer, tokenizer_and_template
from tests.data_files import write_chat
from tests.helpers import tiny_cfg


@pytest.fixture
def files(tmp_path):
    tok = tmp_path / "tok"
    char_tokenizer().save_pretrained(tok)
    return {"train": write_chat(tmp_path / "train.jsonl", 60), "tok": tok}


def _cfg(tmp_path, files, extra=()):
    return tiny_cfg(tmp_path, ["data=jsonl", f"data.train_files=[{files['train']}]", "data.val_fraction=0.1",
                               "data.max_seq_len=48", f"model.tokenizer={files['tok']}", *extra])


def _key(tmp_path, files, extra=()) -> str:
    cfg = _cfg(tmp_path, files, extra)
    tokenizer, _ = tokenizer_and_template(cfg.model)
    return cache_key(cfg, tokenizer, get_kind(get_method(cfg.method.name).data_kind))[0]


NOT_IN_KEY = [["lr=0.5"], ["batch.effective=16"], ["batch.micro=2"], ["trainer.max_steps=7"], ["eval.every_n_steps=3"],
              ["data.packing=padding_free"], ["optimizer=sgd"]]
IN_KEY = [["data.max_seq_len=40"], ["data.overlong=drop"], ["model.chat_template=chatml"], ["method=dpo"],
          ["data.messages_field=conversation"], ["data.val_fraction=0.2"], ["data.seed=3"], ["seed=4"],
          ["method.completion_only=false"]]


def test_key_ignores_what_does_not_change_tokens_and_follows_what_does(tmp_path, files):
    base = _key(tmp_path, files)
    for extra in NOT_IN_KEY:
        assert _key(tmp_path, files, extra) == base, extra
    hub = ["data.source=hub", "data.hub_id=org/set"]
    assert _key(tmp_path, files, hub + ["data.hub_revision=abc"]) != _key(tmp_path, files, hub)
    dpo = _key(tmp_path, files, ["method=dpo"])
    assert _key(tmp_path, files, ["method=dpo", "method.beta=0.5", "method.loss_type=ipo"]) == dpo
    seen = {base}
    for extra in IN_KEY:
        key = _key(tmp_path, files, extra)
        assert key not in seen, extra
        seen.add(key)
    assert _key(tmp_path, files, ["data.seed=3", "seed=9"]) == _key(tmp_path, files, ["data.seed=3", "seed=1"])
    # the run's seed draws the held-out split; with data.seed pinned, or no split drawn, a seed sweep shares the key
    assert _key(tmp_path, files, ["data.val_files=[" + str(files["train"]) + "]", "seed=4"]) == \
        _key(tmp_path, files, ["data.val_files=[" + str(files["train"]) + "]", "seed=2"])
    with open(files["train"], "a") as fh:  # the file's content, not its name
        fh.write(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
                 + "\n")
    assert _key(tmp_path, files) not in seen
    seen.add(_key(tmp_path, files))
    tok = json.loads((files["tok"] / "tokenizer.json").read_text())  # the tokenizer's files
    tok["model"]["vocab"]["zz"] = len(tok["model"]["vocab"]) + 100
    (files["tok"] / "tokenizer.json").write_text(json.dumps(tok))
    assert _key(tmp_path, files) not in seen


def test_key_follows_the_order_and_repeats_of_the_files(tmp_path, files):
    """The files are joined in list order (the held-out split and record order follow): [a, b], [b, a], [a] and
    [a, a] are four different data sets, four keys."""
    other = write_chat(tmp_path / "other.jsonl", 40)
    a, b = str(files["train"]), str(other)
    keys = {_key(tmp_path, files, [f"data.train_files=[{lst}]"]) for lst in (f"{a},{b}", f"{b},{a}", a, f"{a},{a}")}
    assert len(keys) == 4
    val = ["data.val_fraction=0"]
    assert _key(tmp_path, files, val + [f"data.val_files=[{a},{b}]"]) != _key(tmp_path, files, val + [f"data.val_files=[{b},{a}]"])


def _items(prepared, split):
    return [(tuple(tuple(s.input_ids) for s in e.sequences()), tuple(tuple(s.labels) for s in e.sequences()))
            for e in prepared.examples[split]]


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_hit_gives_the_items_and_counts_of_a_fresh_encoding(tmp_path, method):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i} " + "ab" * (i % 7), "chosen": f"c{i}" + "x" * (i % 5),
                                         "rejected": f"r{i}"}) + "\n" for i in range(40)))
    data = pairs if method != "sft" else write_chat(tmp_path / "chat.jsonl", 40)
    cfg = tiny_cfg(tmp_path, [f"method={method}", "data=jsonl", f"data.train_files=[{data}]", "data.val_fraction=0.2",
                              "data.max_seq_len=40"])
    tokenizer, template = tokenizer_and_template(cfg.model)
    kind = get_kind(get_method(method).data_kind)
    fresh = encode_data(cfg, tokenizer, template, kind)
    miss, hit = (prepare_data(cfg, tokenizer, template, kind) for _ in range(2))
    assert (miss.cache["hit"], hit.cache["hit"]) == (False, True)
    for split in ("train", "val"):
        assert _items(hit, split) == _items(fresh, split) == _items(miss, split)
        assert hit.stats[split] == fresh.stats[split]
        assert list(hit.conversations[split]) == list(fresh.conversations[split])
    assert [type(e) for e in hit.examples["train"]] == [type(e) for e in fresh.examples["train"]]
    if method == "kto":
        assert [e.desirable for e in hit.examples["train"]] == [e.desirable for e in fresh.examples["train"]]


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_a_damaged_cache_is_rebuilt_never_used(tmp_path, files, damage):
    cfg = _cfg(tmp_path, files)
    tokenizer, template = tokenizer_and_template(cfg.model)
    kind = get_kind("sft")
    first = ensure_cache(cfg, tokenizer, template, kind)
    folder = Path(first["path"])
    good = _items(open_cache(folder, kind), "train")
    target = folder / ("manifest.json" if damage == "manifest" else "train.arrow")
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        at = raw.index(b'"val"') + 2 if damage == "manifest" else len(raw) // 2
        raw[at] ^= 0x01  # one byte
    target.write_bytes(bytes(raw))
    again = ensure_cache(cfg, tokenizer, template, kind)
    assert (first["hit"], again["hit"], again["rebuilt_damaged"]) == (False, False, True)
    assert _items(open_cache(folder, kind), "train") == good
    assert ensure_cache(cfg, tokenizer, template, kind)["hit"]


def test_a_build_killed_midway_leaves_nothing_used(tmp_path, files):
    cfg = _cfg(tmp_path, files)
    tokenizer, template = tokenizer_and_template(cfg.model)
    key = cache_key(cfg, tokenizer, get_kind("sft"))[0]
    stale = Path(cfg.data.cache_dir) / f"{key}.tmp-999999"  # what a killed build leaves: no manifest, never renamed
    stale.mkdir(parents=True)
    (stale / "train.arrow").write_bytes(b"partial")
    report = ensure_cache(cfg, tokenizer, template, get_kind("sft"))
    assert not report["hit"] and not stale.exists() and Path(report["path"]).name == key
