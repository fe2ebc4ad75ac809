"""eval.harness without running lm-eval: the plan's refusals, lm-eval's result keys as MLflow names, the shipped
task's data, and the exported chat template giving lm-eval the prompt ids the model was trained on."""

from __future__ import annotations

import pytest

from hydralign.errors import ConfigError
from hydralign.harness.arithmetic_task import val_examples
from hydralign.harness.metrics import flatten_results, metric_name, run_params, safe_name
from hydralign.plan.core import make_plan
from tests.helpers import compose_cfg


@pytest.mark.parametrize("task, key, name", [
    ("gsm8k", "exact_match,strict-match", "eval/gsm8k/exact_match_strict-match"),
    ("gsm8k", "exact_match,flexible-extract", "eval/gsm8k/exact_match_flexible-extract"),
    ("arc_easy", "acc,none", "eval/arc_easy/acc"),
    ("arc_easy", "acc_stderr,none", None),  # standard errors are left out
    ("arc_easy", "alias", None),
    ("mmlu (5-shot)", "acc,none", "eval/mmlu _5-shot_/acc"),  # MLflow refuses parentheses
    ("t", "rouge1,take:first", "eval/t/rouge1_take_first"),  # and colons (Lightning's logger strips them)
])
def test_metric_names(task, key, name):
    assert metric_name(task, key) == name


def test_flatten_keeps_finite_numbers_of_tasks_and_groups():
    results = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                                     "exact_match_stderr,strict-match": 0.1, "exact_match,flexible-extract": 0.5,
                                     "sample_len": 4}},
               "groups": {"g": {"acc,none": float("nan"), "acc_norm,none": 1}},
               "n-samples": {"gsm8k": {"original": 10, "effective": 4}}, "versions": {"gsm8k": 3.0}}
    assert flatten_results(results) == {"eval/gsm8k/exact_match_strict-match": 0.25,
                                        "eval/gsm8k/exact_match_flexible-extract": 0.5, "eval/g/acc_norm": 1.0}
    assert run_params(results, "0.4.13") == {"harness.lm_eval_version": "0.4.13", "harness.n_samples.gsm8k": "4",
                                             "harness.task_version.gsm8k": "3.0"}
    assert safe_name("a/b c-d.e_f") == "a/b c-d.e_f"


@pytest.mark.parametrize("overrides, message", [
    (["eval.harness.every=often"], "eval.harness.every=often must be one of none | end | checkpoint | validation"),
    (["eval.harness.every=checkpoint"], "give eval.harness.tasks=[hydralign_arithmetic]"),
    (["eval.harness.tasks=[a,b]", "eval.harness.batch_size=0"], "eval.harness.batch_size=0 must be an integer >= 1"),
    (["eval.harness.tasks=[a]", "eval.harness.limit=2.5"], "eval.harness.limit=2.5 must be a count"),
    (["eval.harness.tasks=[a]", "eval.harness.num_fewshot=-1"], "eval.harness.num_fewshot=-1 must be"),
    (["eval.harness.gen_kwargs=5"], "eval.harness.gen_kwargs=5 must be a mapping"),
    (["eval.harness.tasks=['a,b']"], "one lm-eval task or group name"),
])
def test_bad_settings_are_refused_by_the_plan(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("|", r"\|").replace("+", r"\+")):
        make_plan(compose_cfg(overrides))


def test_the_plan_carries_the_cadence_and_tasks():
    plan = make_plan(compose_cfg(["eval.harness.tasks=[hydralign_arithmetic]", "eval.harness.every=checkpoint",
                                  "eval.harness.gen_kwargs={max_gen_toks:8}", "eval.harness.limit=0.5"]))
    assert (plan.harness_every, plan.harness_tasks) == ("checkpoint", ("hydralign_arithmetic",))
    assert make_plan(compose_cfg([])).harness_every == "none"


def test_the_shipped_task_is_the_default_jobs_held_out_split():
    from hydralign.data.arithmetic import make_splits

    default = make_splits(0, 20000, 500, 3)
    train = {r["messages"][0]["content"] for r in default["train"]}
    docs = val_examples()
    assert len(docs) == 500 and not {d["prompt"] for d in docs} & train
    assert docs[0] == {"prompt": default["val"][0]["messages"][0]["content"],
                       "answer": default["val"][0]["messages"][1]["content"]}
    small = val_examples(max_digits=2, num_train=4000, num_val=128, seed=3)
    assert len(small) == 128 and all(len(d["prompt"]) == 6 for d in small)  # "07+51="


@pytest.mark.parametrize("template", ["tulu", "chatml"])
def test_the_tokenizers_chat_template_gives_the_trained_prompt_ids(template):
    """What lm-eval (apply_chat_template) feeds the model is what hydralign's validation prompts are, BOS included."""
    from hydralign.data.tokenize import generation_examples
    from hydralign.models import tokenizer_and_template

    cfg = compose_cfg([f"model.chat_template={template}"])
    tok, tpl = tokenizer_and_template(cfg.model)
    conv = [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "64"}]
    ours = generation_examples(tok, tpl, [conv])[0].prompt_ids
    theirs = tok.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert theirs["input_ids"] == ours
