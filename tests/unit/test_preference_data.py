"""Preference pairs: every accepted record shape, the errors (file:line, fields found), the skipped pairs,
the completion-only masks, the synthetic pairs and the collated batch."""

from __future__ import annotations

import json
import random

import pytest

from hydralign.data.arithmetic import preference_records, wrong_answer
from hydralign.data.batching import collate_items
from hydralign.data.preference import PairFields, encode_pairs, to_pair
from hydralign.data.readers import read_files
from hydralign.data.templates import CHATML
from hydralign.data.tokenize import IGNORE, TokenizeStats
from hydralign.errors import DataError
from hydralign.models import char_tokenizer

F = PairFields()
USER = {"role": "user", "content": "2+2="}


@pytest.mark.parametrize("record", [
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},  # strings
    {"prompt": [USER], "chosen": [{"role": "assistant", "content": "4"}],  # TRL conversational
     "rejected": [{"role": "assistant", "content": "5"}]},
    {"prompt": "2+2=", "chosen": [USER, {"role": "assistant", "content": "4"}],  # UltraFeedback
     "rejected": [USER, {"role": "assistant", "content": "5"}]},
    {"chosen": [USER, {"role": "assistant", "content": "4"}],  # whole conversations, no prompt field
     "rejected": [USER, {"role": "assistant", "content": "5"}]},
])
def test_record_shapes_give_the_same_pair(record):
    pair, reason = to_pair(record, "f.jsonl:1", F)
    assert reason is None
    assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], "4", "5")


def test_custom_field_names():
    pair, _ = to_pair({"q": "2+2=", "good": "4", "bad": "5"}, "x", PairFields("q", "good", "bad"))
    assert pair.chosen == "4"


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "empty"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, "identical"),
])
def test_skipped_pairs_say_why(record, reason):
    assert to_pair(record, "x", F) == (None, reason)


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "chosen": "a"}, r"missing field\(s\) \['rejected'\].*fields found: \['chosen', 'prompt'\]"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
    ({"prompt": "p", "chosen": [USER, {"role": "assistant", "content": "4"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "5"}]},
     "different conversations"),
    ({"prompt": "p", "chosen": [USER], "rejected": "b"}, "ending in an assistant turn"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "must be a string or a list"),
    ({"prompt": "other", "chosen": [USER, {"role": "assistant", "content": "4"}],
      "rejected": [USER, {"role": "assistant", "content": "5"}]}, "'prompt' differs"),
])
def test_malformed_records_name_origin_and_fields(record, message):
    with pytest.raises(DataError, match=message) as err:
        to_pair(record, "data.jsonl:7", F)
    assert str(err.value).startswith("data.jsonl:7")


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        read_files([str(path)])


def test_encoded_pairs_mask_only_the_answer_and_share_the_prompt():
    tok = char_tokenizer()
    pairs = [to_pair({"prompt": [{"role": "system", "content": "s"}, USER, {"role": "assistant", "content": "3"},
                                 {"role": "user", "content": "again"}], "chosen": "4", "rejected": "55"}, "x", F)[0]]
    stats = TokenizeStats(total=1)
    (ex,) = encode_pairs(tok, CHATML, pairs, 256, "truncate", stats)
    n_prompt = len(tok(CHATML.render_prompt(pairs[0].prompt, tok.eos_token), add_special_tokens=False)["input_ids"])
    assert ex.chosen.input_ids[:n_prompt] == ex.rejected.input_ids[:n_prompt]
    trained = [tok.decode([t]) for t in ex.chosen.labels if t != IGNORE]
    assert "".join(trained) == "4<|im_end|>"  # the earlier assistant turn "3" is not trained
    assert "".join(tok.decode([t]) for t in ex.rejected.labels if t != IGNORE) == "55<|im_end|>"
    assert stats.kept == 1


def test_overlong_pairs_truncate_or_drop_and_targetless_pairs_drop():
    tok = char_tokenizer()
    pair = to_pair({"prompt": "2+2=", "chosen": "4" * 30, "rejected": "5"}, "x", F)[0]
    n_prompt = len(tok(CHATML.render_prompt(pair.prompt, ""), add_special_tokens=False)["input_ids"])
    stats = TokenizeStats(total=1)
    kept = encode_pairs(tok, CHATML, [pair], n_prompt + 10, "truncate", stats)
    assert len(kept) == 1 and stats.truncated == 1 and len(kept[0].chosen.input_ids) == n_prompt + 10
    stats = TokenizeStats(total=1)
    assert encode_pairs(tok, CHATML, [pair], n_prompt + 10, "drop", stats) == [] and stats.dropped_overlong == 1
    stats = TokenizeStats(total=1)
    assert encode_pairs(tok, CHATML, [pair], n_prompt, "truncate", stats) == [] and stats.dropped_no_target == 1


def test_synthetic_pairs_are_plausible_wrong_and_deterministic():
    rng = random.Random(0)
    for correct in ["0", "7", "51", "901", "1111", "99"]:
        for _ in range(50):
            wrong = wrong_answer(correct, rng)
            assert wrong != correct and len(wrong) == len(correct)
            assert sum(a != b for a, b in zip(wrong, correct)) == 1  # one digit off
            assert len(wrong) == 1 or wrong[-1] != "0"  # no leading zero (digits are reversed)
    recs = [{"messages": [USER, {"role": "assistant", "content": "4"}]}] * 3
    assert preference_records(recs, 3) == preference_records(recs, 3)
    assert all(r["chosen"] == "4" and r["rejected"] in ("3", "5") for r in preference_records(recs, 3))


def test_collated_pairs_are_one_batch_chosen_rows_first():
    tok = char_tokenizer()
    pairs = [to_pair({"prompt": "1+1=", "chosen": "2", "rejected": "3"}, "x", F)[0],
             to_pair({"prompt": "10+10=", "chosen": "02", "rejected": "03"}, "x", F)[0]]
    examples = encode_pairs(tok, CHATML, pairs, 64, "truncate", TokenizeStats())
    batch = collate_items(examples, [5, 9], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["index"].tolist() == [5, 9]
    assert batch["real"].tolist() == [True, True]
    assert batch["input_ids"][0, :len(examples[0].chosen.input_ids)].tolist() == examples[0].chosen.input_ids
    assert batch["input_ids"][2, :len(examples[0].rejected.input_ids)].tolist() == examples[0].rejected.input_ids
