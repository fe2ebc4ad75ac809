"""Readers, chat templates, tokenization, the synthetic task and the window schedule."""

from __future__ import annotations

import json

import pytest

from hydralign.data import readers
from hydralign.data.arithmetic import answer, make_splits
from hydralign.data.batching import WindowSchedule
from hydralign.data.templates import CHATML, TULU
from hydralign.data.tokenize import IGNORE, encode, generation_examples
from hydralign.errors import ConfigError, DataError
from hydralign.models import char_tokenizer

FIELDS = readers.Fields()
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="},
        {"role": "assistant", "content": "3"}]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_arithmetic_is_deterministic_disjoint_and_reversed():
    a = make_splits(seed=3, num_train=300, num_val=50, max_digits=2)
    b = make_splits(seed=3, num_train=300, num_val=50, max_digits=2)
    assert a == b
    prompts = {k: {r["messages"][0]["content"] for r in v} for k, v in a.items()}
    assert set(prompts) == {"train", "val"} and not prompts["train"] & prompts["val"]
    assert len(prompts["train"]) == 300  # no duplicates within a split either
    assert answer(864, 394) == "8521"
    for rec in a["train"] + a["val"]:  # every number least significant digit first, operands padded
        x, y = rec["messages"][0]["content"].rstrip("=").split("+")
        assert len(x) == len(y) == 2 and rec["messages"][1]["content"] == answer(int(x[::-1]), int(y[::-1]))
    assert make_splits(seed=4, num_train=300, num_val=50, max_digits=2) != a


def test_arithmetic_formats():
    def first(**kw):
        rec = make_splits(seed=0, num_train=1, num_val=1, max_digits=3, **kw)["train"][0]["messages"]
        return rec[0]["content"], rec[1]["content"]

    prompt, reply = first()
    a, b = (int(x[::-1]) for x in prompt.rstrip("=").split("+"))
    plain, plain_reply = first(reverse_operands=False)
    assert plain == f"{a:03d}+{b:03d}=" and reply == plain_reply == str(a + b)[::-1]
    assert first(reverse_operands=False, pad_operands=False)[0] == f"{a}+{b}="
    assert first(pad_operands=False)[0] == f"{str(a)[::-1]}+{str(b)[::-1]}="


def test_balanced_pairs_in_train_uniform_values_in_val():
    """Half the train pairs have operands 1, 2 or 3 digits long equally often, the other half uniform values
    (90% 3 digits); val keeps the task's own distribution, uniform over 0..999. Distinct pairs keep fewer
    1-digit operands than drawn (1-digit x 1-digit has only 100 pairs)."""
    splits = make_splits(seed=0, num_train=6000, num_val=3000, max_digits=3)

    def share_by_length(records):
        counts = [0, 0, 0]
        for rec in records:
            for x in rec["messages"][0]["content"].rstrip("=").split("+"):
                counts[len(str(int(x[::-1]))) - 1] += 1
        return [c / (2 * len(records)) for c in counts]

    uniform = [0.01, 0.09, 0.90]
    assert share_by_length(splits["train"]) == pytest.approx([0.13, 0.21, 0.66], abs=0.02)
    assert share_by_length(splits["val"]) == pytest.approx(uniform, abs=0.02)
    for fraction, expected in ((0.0, uniform), (1.0, [0.24, 0.35, 0.41])):
        train = make_splits(seed=0, num_train=6000, num_val=10, max_digits=3, balanced_fraction=fraction)["train"]
        assert share_by_length(train) == pytest.approx(expected, abs=0.02)
    with pytest.raises(ConfigError, match="balanced_fraction=1.5 must be in"):
        make_splits(seed=0, num_train=10, num_val=10, max_digits=3, balanced_fraction=1.5)


def test_chatml_render_and_mask(tok):
    examples, stats = encode(tok, CHATML, [CHAT], max_len=512, overlong="truncate")
    ex = examples[0]
    text = tok.decode(ex.input_ids)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+2=<|im_end|>\n"
                    "<|im_start|>assistant\n3<|im_end|>\n")
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert trained == "3<|im_end|>"
    assert ex.num_loss_tokens == 2 and stats.kept == 1


def test_a_batch_encodes_each_conversation_as_alone(tok):
    """Segments shared between conversations (role headers, end-of-turn markers, a repeated answer) are tokenized
    once for the batch: every example still equals its conversation encoded on its own."""
    convs = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
             for p, a in [("1+2=", "3"), ("2+1=", "3"), ("1+2=", "3"), ("10+5=", "51")]] + [CHAT]
    for template in (CHATML, TULU):
        together = encode(tok, template, convs, max_len=512, overlong="truncate")[0]
        alone = [encode(tok, template, [c], max_len=512, overlong="truncate")[0][0] for c in convs]
        assert [(e.input_ids, e.labels) for e in together] == [(e.input_ids, e.labels) for e in alone]


def test_tulu_render_and_mask(tok):
    ex = encode(tok, TULU, [CHAT[1:]], max_len=512, overlong="truncate")[0][0]
    assert ex.input_ids[0] == tok.bos_token_id
    assert tok.decode(ex.input_ids[1:]) == "<|user|>\n1+2=\n<|assistant|>\n3</s>\n"
    assert tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]) == "3</s>"


def test_train_on_all_tokens(tok):
    ex = encode(tok, CHATML, [CHAT], max_len=512, overlong="truncate", train_on_all=True)[0][0]
    assert all(lab != IGNORE for lab in ex.labels)


def test_overlong_truncate_drop_and_counts(tok):
    long = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 100}]
    short = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y"}]
    huge_prompt = [{"role": "user", "content": "p" * 200}, {"role": "assistant", "content": "z"}]
    kept, stats = encode(tok, CHATML, [long, short, huge_prompt], max_len=40, overlong="truncate")
    assert [len(e.input_ids) for e in kept] == [40, len(kept[1].input_ids)]
    assert (stats.truncated, stats.dropped_no_target, stats.kept) == (2, 1, 2)
    kept, stats = encode(tok, CHATML, [long, short, huge_prompt], max_len=40, overlong="drop")
    assert (stats.dropped_overlong, stats.kept) == (2, 1)
    assert stats.as_metrics("train")["data/train_dropped_overlong"] == 2.0


def test_generation_prompt_and_fewshot(tok):
    [g] = generation_examples(tok, CHATML, [CHAT])
    assert tok.decode(g.prompt_ids).endswith("1+2=<|im_end|>\n<|im_start|>assistant\n") and g.reference == "3"
    shot = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    [g] = generation_examples(tok, CHATML, [CHAT], fewshot=[shot])
    text = tok.decode(g.prompt_ids)
    assert text.startswith("<|im_start|>system\nBe brief.") and "2+2=<|im_end|>" in text
    assert text.index("2+2=") < text.index("1+2=")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_messages_and_prompt_completion(tmp_path):
    path = _write(tmp_path / "d.jsonl", [json.dumps({"messages": CHAT}), "",
                                         json.dumps({"prompt": "hi", "completion": "there"})])
    records = readers.read_files([str(path)])
    convs = [readers.to_messages(r, o, FIELDS) for r, o in records]
    assert convs[0] == CHAT
    assert convs[1] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    assert records[1][1] == f"{path}:3"


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"messages": CHAT}), '{"messages": [}'])
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        readers.read_files([str(path)])


def test_malformed_json_file_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": oops}\n]')
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        readers.read_files([str(path)])


def test_missing_field_names_field_and_found(tmp_path):
    path = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "a", "answer": "b"})])
    [(rec, origin)] = readers.read_files([str(path)])
    with pytest.raises(DataError, match=r"d.jsonl:1: missing field 'completion'; fields found: \['answer', 'prompt'\]"):
        readers.to_messages(rec, origin, FIELDS)
    with pytest.raises(DataError, match=r"neither 'messages' nor 'prompt'/'completion'; fields found: \['text'\]"):
        readers.to_messages({"text": "x"}, "f:1", FIELDS)
    custom = readers.Fields(prompt="question", completion="answer")
    assert readers.to_messages({"question": "q", "answer": "a"}, "f:1", custom)[1]["content"] == "a"


def test_bad_messages_are_reported():
    with pytest.raises(DataError, match=r"f:7: messages\[0\] has role 'bot'"):
        readers.to_messages({"messages": [{"role": "bot", "content": "x"}]}, "f:7", FIELDS)
    with pytest.raises(DataError, match="no assistant turn"):
        readers.to_messages({"messages": [{"role": "user", "content": "x"}]}, "f:7", FIELDS)


def test_parquet_and_missing_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}] * 3), path)
    records = readers.read_files([str(path)])
    assert len(records) == 3 and records[2][1] == f"{path}: row 2"
    with pytest.raises(DataError, match="does not exist"):
        readers.read_files([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError, match="unsupported extension"):
        readers.read_files([str(_write(tmp_path / "d.csv", ["a,b"]))])


def test_hub_reader_on_a_local_dataset_dir(tmp_path):
    """read_hub is datasets.load_dataset for real: here on a local directory of JSON Lines."""
    folder = tmp_path / "myset"
    folder.mkdir()
    _write(folder / "train.jsonl", [json.dumps({"messages": CHAT})] * 5)
    records = readers.read_hub(str(folder), None, "train")
    assert len(records) == 5 and readers.to_messages(*records[0], FIELDS) == CHAT


@pytest.mark.parametrize("world, micro", [(1, 8), (2, 4), (4, 1), (2, 2)])
def test_window_schedule_partitions_each_step(world, micro):
    tokens = [1 + (i % 5) for i in range(40)]
    effective = 8
    scheds = [WindowSchedule(tokens, effective, micro, world, r, seed=1) for r in range(world)]
    accum = scheds[0].grad_accum
    for step in range(2 * 40 // effective):  # two epochs
        seen, totals = [], set()
        for s in scheds:
            for k in range(accum):
                members, window_tokens, last, _ = s.micro_batch(step * accum + k)
                assert len(members) == micro and last == (k == accum - 1)
                seen += members
                totals.add(window_tokens)
        assert len(seen) == effective == len(set(seen))
        assert totals == {sum(tokens[i] for i in seen)}  # every rank agrees on the window's tokens
    epoch0 = [i for step in range(5) for i in scheds[0].window(step).tolist()]
    assert sorted(epoch0) == list(range(40))  # each example once per epoch
    assert scheds[0].window(5).tolist() != scheds[0].window(0).tolist()  # reshuffled next epoch


def test_empty_data_set_is_an_error(tmp_path, make_cfg):
    from hydralign.data.module import load_conversations

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = make_cfg(["data=jsonl", f"data.train_files=[{empty}]"])
    with pytest.raises(DataError, match=r"the train \(.*empty.jsonl\) data set is empty"):
        load_conversations(cfg)


def test_val_fraction_split_is_disjoint(tmp_path, make_cfg):
    from hydralign.data.module import load_conversations

    path = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(50)])
    cfg = make_cfg(["data=jsonl", f"data.train_files=[{path}]", "data.val_fraction=0.2"])
    convs = load_conversations(cfg)
    prompts = {k: {c[0]["content"] for c in v} for k, v in convs.items()}
    assert len(prompts["val"]) == 10 and len(prompts["train"]) == 40 and not prompts["val"] & prompts["train"]


def test_eval_batches_equal_per_rank_and_filler_adds_nothing():
    from hydralign.data.batching import EvalBatches
    from hydralign.data.tokenize import Example

    examples = [Example([1, 2, 3], [IGNORE, 2, 3]) for _ in range(5)]
    ranks = [EvalBatches(examples, batch_size=2, pad_id=0, world_size=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # rank 0: 3 examples (2 + 1), rank 1: 2 (+ a filler)
    filler = ranks[1][1]
    assert (filler["labels"] == IGNORE).all()
    real = sum(int((b["labels"] != IGNORE).sum()) for r in ranks for b in (r[i] for i in range(len(r))))
    assert real == 5 * 2
