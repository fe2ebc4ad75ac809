"""The reproduction cards name, under ``eval.harness``, the lm-eval tasks their papers report, and every name is one
the installed lm-eval knows (its task registry reads task YAMLs only: offline). The MiniLLM card, whose benchmarks
lm-eval lacks, documents a Rouge-L task YAML; that YAML, as written there, loads and scores."""

from __future__ import annotations

import json
import re

import pytest

from hydralign.harness.adapter import PACKAGE_TASKS
from hydralign.harness.rouge import process_results, rouge_l
from tests.golden.plans import cards
from tests.helpers import CONF, compose_cfg

CARDS = cards()
# What each paper reports that lm-eval has (a card must keep naming these).
EXPECTED = {
    "tulu3_8b_dpo": {"gsm8k_cot", "minerva_math", "ifeval", "mmlu", "truthfulqa_mc2", "bbh", "drop"},
    "tulu3_8b_dpo_paper": {"gsm8k_cot", "minerva_math", "ifeval"},
    "tulu3_8b_rlvr": {"gsm8k_cot", "minerva_math", "ifeval"},
    "deepseek_llm_7b_sft": {"mmlu", "gsm8k", "minerva_math", "bbh", "hellaswag", "triviaqa", "ceval-valid", "cmmlu"},
    "deepseek_llm_67b_sft": {"mmlu", "gsm8k", "minerva_math", "cmmlu"},
    "deepseek_llm_7b_dpo": {"mmlu", "gsm8k", "minerva_math", "cmmlu"},
    "firefly_qwen15_7b_sft_qlora": {"arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"},
    "firefly_qwen15_7b_dpo_qlora": {"arc_challenge", "gsm8k"},
    "arithmetic_teacher_sft": {"hydralign_arithmetic_teacher"},
    "minillm_arithmetic_tiny": {"hydralign_arithmetic_teacher"},
}
NO_LM_EVAL_TASK = {"minillm_gpt2_1.5b_to_120m"}  # Rouge-L on held-out instructions: documented in the card


@pytest.fixture(scope="module")
def known() -> set[str]:
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_path=[str(PACKAGE_TASKS)]).all_tasks)


@pytest.fixture(scope="module")
def harness() -> dict[str, dict]:
    out = {}
    for name, overrides in CARDS.items():
        cfg = compose_cfg(overrides)
        out[name] = {"tasks": list(cfg.eval.harness.tasks), "every": cfg.eval.harness.every,
                     "limit": cfg.eval.harness.limit}
    return out


def test_every_card_is_covered():
    assert set(CARDS) == set(EXPECTED) | NO_LM_EVAL_TASK


@pytest.mark.parametrize("card", sorted(CARDS))
def test_every_task_a_card_names_is_known_to_lm_eval(card, harness, known):
    tasks = harness[card]["tasks"]
    unknown = [t for t in tasks if t not in known]
    assert not unknown, f"{card}: lm-eval knows no task or group {unknown}"
    assert EXPECTED.get(card, set()) <= set(tasks), (card, tasks)
    assert len(set(tasks)) == len(tasks), tasks
    if card in NO_LM_EVAL_TASK:
        assert tasks == [] and harness[card]["every"] == "none"
    else:  # evaluated during the run, on every example
        assert harness[card]["every"] in ("end", "checkpoint"), harness[card]
        assert harness[card]["limit"] is None


def test_the_registry_check_fails_on_a_misspelled_name(known):
    assert "gsm8k" in known and "minerva_math" in known and "hydralign_arithmetic_teacher" in known
    assert "gsm8k_cots" not in known and "alpaca_eval" not in known and "math" not in known


def test_the_teacher_task_scores_the_teachers_own_split():
    """hydralign_arithmetic_teacher is the val split experiment=arithmetic_teacher_sft holds out (and trains not on)."""
    from hydralign.data.arithmetic import make_splits
    from hydralign.harness.arithmetic_task import dataset

    cfg = compose_cfg(["experiment=arithmetic_teacher_sft"])
    a = cfg.data.arithmetic
    splits = make_splits(int(cfg.seed), a.num_train, a.num_val, a.max_digits, None, a.pad_operands,
                         a.reverse_operands, a.balanced_fraction)
    val = [r["messages"][0]["content"] for r in splits["val"]]
    train = {r["messages"][0]["content"] for r in splits["train"]}
    import yaml

    kwargs = yaml.safe_load((PACKAGE_TASKS / "hydralign_arithmetic_teacher.yaml").read_text())["dataset_kwargs"]
    prompts = dataset(**kwargs)["test"]["prompt"]
    assert prompts == val and len(prompts) == 200 and not train & set(prompts)


def test_rouge_l_by_hand():
    # stemmed tokens: [the, cat, sat] vs [a, cat, sit, on, the, mat]: longest common subsequence 1 token,
    # precision 1/3, recall 1/6, F = 2 * (1/18) / (1/2) = 2/9
    assert rouge_l("the cats sat", ["a cat sits on the mat"]) == pytest.approx(100 * 2 / 9)
    assert rouge_l("the cat sat", ["nothing alike", "the cat sat"]) == pytest.approx(100.0)  # best reference
    assert rouge_l("anything", [""]) == 0.0


def test_the_minillm_cards_rouge_task_yaml_loads_and_scores(tmp_path):
    """The task YAML the MiniLLM card documents, written out as it stands there (over a local file), is a task
    lm-eval builds, and its per-document score is Rouge-L."""
    text = (CONF / "experiment" / "minillm_gpt2_1.5b_to_120m.yaml").read_text()
    lines = re.findall(r"^    #   (.*)$", text, flags=re.M)
    assert lines and lines[0] == "task: dolly_rougel", lines
    data = tmp_path / "held_out.jsonl"
    rows = [{"prompt": "Name a fruit.", "completion": "An apple is a fruit."}, {"prompt": "Hi?", "completion": "Hi."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_text = "\n".join(lines).replace("<held-out prompt/completion JSONL>", str(data)) + "\n"
    (tmp_path / "dolly_rougel.yaml").write_text(yaml_text)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(tmp_path)], include_defaults=False)
    task = manager.load(["dolly_rougel"])["tasks"]["dolly_rougel"]
    docs = list(task.test_docs())
    assert [task.doc_to_text(d) for d in docs] == ["Name a fruit.", "Hi?"]
    assert task.process_results(docs[0], ["An apple is a fruit."]) == {"rougeL": pytest.approx(100.0)}
    assert task.process_results(docs[0], ["a pear"]) == process_results(docs[0], ["a pear"])
    assert task.process_results(docs[0], ["a pear"])["rougeL"] == pytest.approx(100 * 2 * (1 / 2 * 1 / 5) / (1 / 2 + 1 / 5))
