"""Verifiable rewards: each verifier on right, wrong and malformed answers; weights; a raising verifier."""

from __future__ import annotations

import pickle

import pytest

from hydralign import rewards as R
from hydralign.errors import ConfigError


def test_exact_answer():
    assert R.exact_answer(" 321\n", "321") == 1.0
    assert R.exact_answer("3210", "321") == 0.0


@pytest.mark.parametrize("completion, reference, want", [
    ("She pays 3 + 4 = 7 dollars, so the answer is 1,250.", "steps... #### 1250", 1.0),
    ("The answer is 12.", "#### 12", 1.0),
    ("12 then 13", "#### 12", 0.0),  # the LAST number counts
    ("no number here", "#### 12", 0.0),
    ("-4", "-4.0", 1.0),
])
def test_last_number(completion, reference, want):
    assert R.last_number(completion, reference) == want


@pytest.mark.parametrize("completion, reference, want", [
    (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"first \boxed{3} then \boxed{ 4 }", "4", 1.0),
    (r"\boxed{4}", r"answer $\boxed{4}$", 1.0),
    (r"\boxed{4.0}", "4", 1.0),
    (r"\boxed{5}", "4", 0.0),
    ("4", "4", 0.0),  # no box, no reward
    (r"\boxed{4", "4", 0.0),  # unbalanced
])
def test_boxed(completion, reference, want):
    assert R.boxed(completion, reference) == want


def test_format_reward():
    assert R.format_reward("<think>a+b</think> <answer>3</answer>", "3") == 1.0
    assert R.format_reward("<answer>3</answer>", "3") == 0.0
    assert R.format_reward("321", "x", pattern=r"\d+") == 1.0
    assert R.format_reward("32a", "x", pattern=r"\d+") == 0.0


def test_weighted_score_and_a_raising_verifier(monkeypatch):
    def boom(completion, reference):
        if completion == "bad":
            raise RuntimeError("verifier crashed")
        return 0.5

    monkeypatch.setitem(R.REWARDS, "boom", boom)
    totals, per, errors = R.score(["321", "bad", "12"], ["321", "321", "21"],
                                  {"exact_answer": 1.0, "format": 0.5, "boom": 2.0}, format_pattern=r"\d+")
    assert per == {"exact_answer": [1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0], "boom": [0.5, 0.0, 0.5]}
    assert errors == {"exact_answer": 0, "format": 0, "boom": 1}
    assert totals == pytest.approx([1 + 0.5 + 1.0, 0.0, 0.5 + 1.0])


def test_check_rewards():
    R.check_rewards({"exact_answer": 1.0, "boxed": 0.5})
    with pytest.raises(ConfigError, match="unknown verifiers \\['nope'\\]"):
        R.check_rewards({"nope": 1.0})
    with pytest.raises(ConfigError, match="empty"):
        R.check_rewards({})
    with pytest.raises(ConfigError, match="must be a number"):
        R.check_rewards({"exact_answer": "x"})


def test_scoring_routed_per_source():
    """Tulu 3 RLVR: GSM8K by its last number, MATH by its boxed answer, anything else by method.rewards."""
    by_source = {"gsm8k": {"last_number": 1.0}, "math": {"boxed": 2.0, "format": 0.5}}
    completions = ["so 1,250", r"it is \boxed{4}", r"\boxed{4}", "321", "7"]
    references = [R.AnswerKey("#### 1250", "gsm8k"), R.AnswerKey("4", "MATH"), R.AnswerKey("5", "math"),
                  "321", R.AnswerKey("7", "ifeval")]  # ifeval: no table of its own -> method.rewards
    totals, per, errors = R.score(completions, references, {"exact_answer": 1.0}, r"\\boxed\{\d\}", by_source)
    assert per == {"exact_answer": [None, None, None, 1.0, 1.0], "last_number": [1.0, None, None, None, None],
                   "boxed": [None, 1.0, 0.0, None, None], "format": [None, 0.0, 1.0, None, None]}
    assert totals == [1.0, 2.0, 0.5, 1.0, 1.0]
    assert errors == {"exact_answer": 0, "last_number": 0, "boxed": 0, "format": 0}
    assert [R.max_reward(t) for t in R.route([r.source if isinstance(r, R.AnswerKey) else None for r in references],
                                             {"exact_answer": 1.0}, by_source)] == [1.0, 2.5, 2.5, 1.0, 1.0]


def test_a_record_dataset_field_becomes_the_answer_keys_source():
    from hydralign.data.readers import Fields, to_messages

    fields = Fields("no_messages_field", "messages", "ground_truth")  # conf/data/tulu3_rlvr_gsm_math_if.yaml
    msgs = to_messages({"messages": [{"role": "user", "content": "2+3?"}], "ground_truth": "5", "dataset": "gsm8k"},
                       "x:1", fields)
    key = msgs[-1]["content"]
    assert key == "5" and R.source_of(key) == "gsm8k"
    assert pickle.loads(pickle.dumps(key)).source == "gsm8k"  # survives data-loader workers
    plain = to_messages({"messages": [{"role": "user", "content": "2+3?"}], "ground_truth": "5"}, "x:2", fields)
    assert R.source_of(plain[-1]["content"]) is None


def test_check_rewards_by_source_names_the_key():
    R.check_rewards_by_source({"gsm8k": {"last_number": 1.0}})
    with pytest.raises(ConfigError, match=r"method.rewards_by_source.math names unknown verifiers \['boxd'\]"):
        R.check_rewards_by_source({"gsm8k": {"last_number": 1.0}, "math": {"boxd": 1.0}})
    with pytest.raises(ConfigError, match=r"method.rewards_by_source.ifeval is empty"):
        R.check_rewards_by_source({"ifeval": {}})


def test_sources_differing_only_in_case_are_refused():
    from hydralign.errors import ConfigError
    from hydralign.rewards import check_rewards_by_source

    with pytest.raises(ConfigError, match=r"method.rewards_by_source.MATH and method.rewards_by_source.math name the "
                                          r"same source"):
        check_rewards_by_source({"math": {"boxed": 1.0}, "MATH": {"last_number": 1.0}})
