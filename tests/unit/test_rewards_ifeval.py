"""The ``ifeval`` verifier (hydralign/rewards_ifeval.py) on hand-made records in the IFEval format: strict reward 1
for a response that follows every instruction, 0 when it misses one; open-instruct's two answer-key forms; the
checkers that need nltk's punkt_tab (absent offline) refused by name, and exactly those."""

from __future__ import annotations

import json

import pytest

from hydralign import rewards_ifeval as V
from hydralign.errors import ConfigError
from hydralign.rewards import REWARDS, AnswerKey, score


def key(ids: list[str], kwargs: list[dict]) -> str:
    """An answer key as google/IFEval writes a record's instruction_id_list and kwargs."""
    return json.dumps({"key": 1, "prompt": "...", "instruction_id_list": ids, "kwargs": kwargs})


THREE = key(["punctuation:no_comma", "detectable_format:title", "length_constraints:number_words"],
            [{}, {}, {"num_words": 6, "relation": "at least"}])

CASES = [  # (answer key, a response following all of it, responses each missing one instruction)
    (THREE, "<<Cats>> Cats sit on warm mats all day.",
     ["<<Cats>> Cats, sit on warm mats all day.", "Cats sit on warm mats all day long.", "<<Cats>> Cats sit."]),
    (key(["keywords:existence", "keywords:forbidden_words"], [{"keywords": ["apple", "pear"]}, {"forbidden_words": ["plum"]}]),
     "An apple and a pear.", ["An apple and a plum and a pear.", "An apple only."]),
    (key(["keywords:frequency", "keywords:letter_frequency"],
         [{"keyword": "tea", "frequency": 2, "relation": "at least"}, {"letter": "z", "let_frequency": 2,
                                                                        "let_relation": "less than"}]),
     "Tea, then more tea.", ["Tea once.", "Tea and tea with zz."]),
    (key(["detectable_format:number_bullet_lists", "detectable_content:postscript"],
         [{"num_bullets": 2}, {"postscript_marker": "P.S."}]),
     "* one\n* two\nP.S. bye", ["* one\nP.S. bye", "* one\n* two\nbye"]),
    (key(["startend:end_checker", "startend:quotation"], [{"end_phrase": "Any other questions?"}, {}]),
     '"Here it is. Any other questions?"', ['"Here it is. Any other questions? Thanks"', 'Here it is. Any other questions?']),
    (key(["detectable_format:json_format"], [{}]), '{"a": 1}', ["a: 1"]),
    (key(["combination:repeat_prompt", "combination:two_responses"], [{"prompt_to_repeat": "Say hi."}, {}]),
     "Say hi. Hi there.\n******\nHello!", ["Hi there.\n******\nHello!", "Say hi. Hi there."]),
    (key(["change_case:english_lowercase"], [{}]), "this is a plain english sentence about the weather today",
     ["This is a plain English sentence about the weather today"]),
    (key(["language:response_language"], [{"language": "de"}]),
     "Das ist ein kurzer deutscher Satz über das Wetter heute.", ["This is a short English sentence about the weather."]),
    (key(["length_constraints:nth_paragraph_first_word"], [{"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "so"}]),
     "First part.\n\nSo second part.", ["First part.\n\nThen second part."]),
]


@pytest.mark.parametrize("reference, good, bad", CASES, ids=[json.loads(c[0])["instruction_id_list"][0] for c in CASES])
def test_strict_reward_one_when_all_followed_zero_when_one_is_missed(reference, good, bad):
    assert V.ifeval(good, reference) == 1.0
    for response in bad:
        assert V.ifeval(response, reference) == 0.0, response
    assert V.ifeval("   ", reference) == 0.0  # an empty answer follows nothing


def test_open_instructs_forms_read_the_same():
    ids, kwargs = json.loads(THREE)["instruction_id_list"], json.loads(THREE)["kwargs"]
    newer = str([{"instruction_id": ids, "kwargs": kwargs}])  # a Python literal of a list, as its newer data
    assert V.constraints(newer) == V.constraints(THREE) == V.constraints(json.loads(THREE))
    assert V.ifeval("<<Cats>> Cats sit on warm mats all day.", newer) == 1.0
    assert V.ifeval("<<Cats>> Cats, sit on warm mats all day.", newer) == 0.0


@pytest.mark.parametrize("ground_truth, good, bad", [
    ({"func_name": "validate_lowercase"}, "all lowercase english words in this sentence here", "Not Lower"),
    ({"func_name": "validate_no_commas"}, "no commas here", "one, two"),
    ({"func_name": "verify_keyword_frequency", "word": "cat", "N": 2}, "cat and cat", "cat cat cat"),  # exactly 2
    ({"func_name": "validate_word_constraint", "N": 10, "quantifier": "around"}, " ".join(["w"] * 11),
     " ".join(["w"] * 12)),  # open-instruct's tolerance for 10 is 1 word
    ({"func_name": "validate_word_constraint", "N": 3, "quantifier": "at most"}, "one two three", "one two three four"),
    ({"func_name": "validate_end", "end_phrase": "Is there anything else?"}, "Done. Is there anything else?", "Done."),
    ({"func_name": "validate_sections", "N": 2, "section_splitter": "SECTION"}, "SECTION 1 a\nSECTION 2 b",
     "SECTION 1 a"),
    ({"func_name": "validate_title", "N": None, "quantifier": None}, "<<T>> text", "text"),
])
def test_tulu_mixtures_func_name_form_translated_to_lm_eval_checkers(ground_truth, good, bad):
    reference = json.dumps(ground_truth)
    assert V.ifeval(good, reference) == 1.0
    assert V.ifeval(bad, reference) == 0.0


def test_checkers_that_need_nltk_data_are_exactly_the_two_named():
    """Every lm-eval IFEval checker, built with plausible arguments, on one text: with punkt_tab absent, exactly
    the ones NEEDS_PUNKT names raise nltk's LookupError (all others answer)."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        pytest.skip("punkt_tab is installed here: nothing is missing")
    except LookupError:
        pass
    args = {"length_constraints:number_sentences": {"num_sentences": 2, "relation": "at least"},
            "change_case:capital_word_frequency": {"capital_frequency": 1, "capital_relation": "at least"},
            "combination:repeat_prompt": {"prompt_to_repeat": "The cat sat."}}
    failed = set()
    for ident, cls in V._registry().items():
        checker = cls(ident)
        checker.build_description(**args.get(ident, {}))
        try:
            checker.check_following("The cat sat. The CAT slept on the mat today.")
        except LookupError:
            failed.add(ident)
    assert failed == set(V.NEEDS_PUNKT)
    assert V._missing_resources() == V.NEEDS_PUNKT


@pytest.mark.parametrize("reference, reason", [
    (key(["length_constraints:number_sentences"], [{"num_sentences": 2, "relation": "at least"}]),
     "length_constraints:number_sentences needs nltk's punkt_tab"),
    (json.dumps({"func_name": "validate_choice", "options": "yes, no"}), "validate_choice: no lm-eval checker"),
    (key(["length_constraints:number_words"], [{"num_words": 5}]), "not every argument it checks"),
    (key(["keywords:letter_frequency"], [{"letter": "%", "let_frequency": 1, "let_relation": "at least"}]),
     "not every argument it checks"),  # the checker would draw its own letter
    (key(["no_such:instruction"], [{}]), "not an lm-eval IFEval instruction"),
    ("42", "not int"),
])
def test_unscorable_keys_are_refused_with_the_reason(monkeypatch, reference, reason):
    monkeypatch.setattr(V, "_missing_resources", lambda: dict(V.NEEDS_PUNKT))  # as offline, whatever this machine has
    V._checkers.cache_clear()
    with pytest.raises(V.Unscorable, match=reason.replace("(", r"\(")):
        V.ifeval("Some answer.", reference)
    totals, per, errors = score(["Some answer."], [AnswerKey(reference, "ifeval")], {"exact_answer": 0.0},
                                by_source={"ifeval": {"ifeval": 1.0}})
    assert totals == [0.0] and errors["ifeval"] == 1  # in training: 0 and counted
    V._checkers.cache_clear()


def test_routed_by_source_next_to_other_verifiers():
    refs = [AnswerKey(THREE, "ifeval"), AnswerKey("12", "gsm8k")]
    totals, per, errors = score(["<<Cats>> Cats sit on warm mats all day.", "so 12"], refs, {"exact_answer": 0.0},
                                by_source={"ifeval": {"ifeval": 1.0}, "gsm8k": {"last_number": 1.0}})
    assert REWARDS["ifeval"] is V.ifeval
    assert totals == [1.0, 1.0] and per["ifeval"] == [1.0, None] and errors["ifeval"] == 0


def test_the_data_check_refuses_a_source_it_cannot_score_and_counts_the_rest(capsys):
    with pytest.raises(ConfigError, match=r"routes 2 train prompts to the ifeval verifier, which can score none"):
        V.check_references(["12", "7"], "method.rewards_by_source")
    V.check_references([THREE, json.dumps({"func_name": "validate_choice", "options": "a"})], "method.rewards")
    assert "ifeval verifier: 1 of 2 train prompts score 0: func_name validate_choice" in capsys.readouterr().out


def test_a_language_check_answers_the_same_every_time():
    reference = key(["language:response_language"], [{"language": "en"}])
    answers = {V.ifeval("ok fine yes", reference) for _ in range(20)}  # short, ambiguous text: langdetect samples
    assert len(answers) == 1
