"""lm-eval during training (issue 17): a short run of the default task evaluated with each checkpoint through
lm-eval, on the embedded task (``hydralign_arithmetic``) and on two tasks over local JSON files (a generation task
scored by exact match, a multiple-choice task scored by log-likelihood accuracy); the numbers equal the ``lm_eval``
command line's on the exported ``hf_model/``, metric by metric; the checkpoint index records them, and
``:best=eval/hydralign_arithmetic/exact_match,max`` picks the argmax. GSM8K's own task definition on a local file.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hydralign.checkpoints import index as checkpoint_index
from hydralign.checkpoints.references import forget, resolve_reference
from hydralign.data.arithmetic import wrong_answer
from hydralign.harness.adapter import PACKAGE_TASKS
from hydralign.harness.arithmetic_task import val_examples
from hydralign.harness.metrics import flatten_results
from hydralign.run.job import run
from tests.helpers import tiny_cfg

SPLIT = {"max_digits": 2, "num_train": 4000, "num_val": 128}  # the run's arithmetic data (its val split held out)
LEARN = [f"data.arithmetic.{k}={v}" for k, v in SPLIT.items()] + [
    "eval.num_generate=32", "trainer.max_steps=300", "eval.every_n_steps=100", "checkpoint.keep_last_k=10",
    "trainer.log_every_n_steps=50", "eval.harness.every=checkpoint",
    "eval.harness.tasks=[hydralign_arithmetic,sums_gen,sums_mc]", "eval.harness.limit=48"]
TASKS = ("hydralign_arithmetic", "sums_gen", "sums_mc")


def write_tasks(folder: Path) -> Path:
    """Task YAMLs over local data: hydralign_arithmetic redefined on the run's own val split (2-digit sums), and
    the same held-out sums as a JSON file, once to be answered (generate_until) and once as 3 choices."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for ex in val_examples(seed=0, **SPLIT):
        wrong = sorted({wrong_answer(ex["answer"], rng) for _ in range(8)})[:2]
        choices = sorted([ex["answer"], *wrong])
        rows.append({**ex, "choices": choices, "label": choices.index(ex["answer"])})
    data = folder / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kwargs = json.dumps({"data_files": {"test": str(data)}})
    (folder / "hydralign_arithmetic.yaml").write_text(
        f"include: {PACKAGE_TASKS / 'hydralign_arithmetic.yaml'}\ntask: hydralign_arithmetic\n"
        f"dataset_kwargs: {json.dumps({**SPLIT, 'seed': 0})}\n")
    (folder / "sums_gen.yaml").write_text(
        f"task: sums_gen\ndataset_path: json\ndataset_kwargs: {kwargs}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs: {until: ['</s>', '\\n'], max_gen_toks: 6, do_sample: false}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    (folder / "sums_mc.yaml").write_text(
        f"task: sums_mc\ndataset_path: json\ndataset_kwargs: {kwargs}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{prompt}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\ntarget_delimiter: ''\n"
        "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    tasks = write_tasks(tmp / "tasks")
    cfg = tiny_cfg(tmp, LEARN + [f"eval.harness.include_path=[{tasks}]"])
    metrics = run(cfg)
    return cfg, metrics, tmp, tasks


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_one_evaluation_per_checkpoint_logged_and_indexed(evaluated):
    cfg, _, tmp, _ = evaluated
    run_dir = tmp / "run"
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (run_dir / "mlflow_run_id").read_text()
    em = _history(client, run_id, "eval/hydralign_arithmetic/exact_match")
    assert [s for s, _ in em] == [100, 200, 300], em  # the steps checkpoints were written at, once each
    assert em[-1][1] > em[0][1], em  # it learns: the score rises with the step
    assert [s for s, _ in _history(client, run_id, "eval/sums_mc/acc")] == [100, 200, 300]
    assert sorted(p.name for p in (run_dir / "harness").iterdir()) == [
        "step000100.json", "step000200.json", "step000300.json"]
    assert [a.path for a in client.list_artifacts(run_id, "harness")] == [
        "harness/step000100.json", "harness/step000200.json", "harness/step000300.json"]
    params = client.get_run(run_id).data.params
    assert params["harness.n_samples.hydralign_arithmetic"] == "48" and params["harness.n_samples.sums_mc"] == "48"
    assert params["harness.lm_eval_version"] == "0.4.13"
    recorded = checkpoint_index.read(run_dir / "checkpoints")["validations"]
    assert [recorded[str(s)]["eval/hydralign_arithmetic/exact_match"] for s, _ in em] == [v for _, v in em]
    assert all("val/exact_match" in recorded[str(s)] for s, _ in em)  # beside the validation's, not instead


@pytest.mark.slow
def test_best_by_a_harness_metric_picks_the_argmax(evaluated):
    _, _, tmp, _ = evaluated
    run_dir = tmp / "run"
    rows = [r for r in checkpoint_index.entries(run_dir / "checkpoints") if not r["name"].startswith("best")]
    scores = {r["step"]: r["metrics"]["eval/hydralign_arithmetic/exact_match"] for r in rows}
    assert sorted(scores) == [100, 200, 300]
    forget()
    picked = resolve_reference(f"{run_dir}:best=eval/hydralign_arithmetic/exact_match,max")
    best = max(scores.values())
    assert picked.lineage["step"] == str(min(s for s, v in scores.items() if v == best)), (scores, picked)
    assert picked.lineage["metric"] == "eval/hydralign_arithmetic/exact_match"
    worst = resolve_reference(f"{run_dir}:best=eval/sums_mc/acc,min")
    assert float(worst.lineage["metric_value"]) == min(r["metrics"]["eval/sums_mc/acc"] for r in rows)
    forget()


@pytest.mark.slow
def test_numbers_equal_the_lm_eval_command_line_on_the_exported_model(evaluated):
    cfg, _, tmp, tasks = evaluated
    run_dir = tmp / "run"
    out = tmp / "cli"
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={run_dir / 'hf_model'}", "--tasks", ",".join(TASKS), "--include_path", str(tasks),
           "--device", "cpu", "--batch_size", "8", "--limit", "48", "--apply_chat_template",
           "--output_path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = flatten_results(json.loads(next(out.rglob("results_*.json")).read_text()))
    ours = flatten_results(json.loads((run_dir / "harness" / "step000300.json").read_text()))
    assert set(cli) == set(ours) == {"eval/hydralign_arithmetic/exact_match", "eval/sums_gen/exact_match",
                                     "eval/sums_mc/acc"}
    for name in sorted(cli):
        assert ours[name] == pytest.approx(cli[name], abs=1e-12), (name, ours[name], cli[name])
    print("lm_eval CLI vs hydralign:", {k: (ours[k], cli[k]) for k in sorted(cli)})
    assert 0.0 < ours["eval/sums_mc/acc"] and 0.0 < ours["eval/sums_gen/exact_match"]  # a real comparison


@pytest.mark.slow
def test_gsm8k_through_lm_evals_own_task_on_a_local_file(tmp_path):
    import lm_eval

    folder = tmp_path / "gsm8k_local"
    folder.mkdir()
    rows = [{"question": f"Tom has {a} apples and buys {b}. How many?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"}
            for a, b in [(2, 3), (4, 5), (1, 1), (7, 2)]]
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    files = {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    (folder / "gsm8k.yaml").write_text(f"include: {own}\ntask: gsm8k\ndataset_path: json\ndataset_name: null\n"
                                       f"dataset_kwargs: {json.dumps({'data_files': files})}\n")
    cfg = tiny_cfg(tmp_path, ["trainer.max_steps=2", "eval.every_n_steps=2", "eval.harness.tasks=[gsm8k]",
                              "eval.harness.every=end", f"eval.harness.include_path=[{folder}]",
                              "eval.harness.num_fewshot=0", "eval.harness.gen_kwargs={max_gen_toks:8}"])
    run(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text()
    logged = client.get_run(run_id).data.metrics
    assert {"eval/gsm8k/exact_match_strict-match", "eval/gsm8k/exact_match_flexible-extract"} <= set(logged)
    assert client.get_run(run_id).data.params["harness.n_samples.gsm8k"] == "4"
    saved = json.loads((tmp_path / "run" / "harness" / "step000002.json").read_text())
    assert saved["configs"]["gsm8k"]["dataset_path"] == "json"  # lm-eval's gsm8k, on the local file


@pytest.mark.slow
@pytest.mark.parametrize("every, cadence, steps", [
    ("validation", ["eval.every_n_steps=2"], [0, 2, 4]),  # the validation before training included
    ("checkpoint", ["eval.every_n_steps=4", "checkpoint.every_n_steps=1"], [1, 2, 3, 4]),  # mid-training saves
])
def test_a_lora_policy_evaluated_trains_as_without(tmp_path, every, cadence, steps):
    """peft=lora: the PeftModel goes to lm-eval as it is (adapters active); training is untouched (train/eval modes
    of every module and the random generators restored: an evaluation at a step that is not validated would
    otherwise leave LoRA's dropout off for the next step)."""
    tasks = write_tasks(tmp_path / "tasks")
    common = ["peft=lora", "peft.r=4", "peft.dropout=0.3", "lr=0.01", "trainer.max_steps=4", "logger=none",
              "checkpoint.export_hf=false", *cadence]
    with_harness = tiny_cfg(tmp_path / "a", common + [f"eval.harness.every={every}", "eval.harness.tasks=[sums_mc]",
                                                      "eval.harness.limit=16", f"eval.harness.include_path=[{tasks}]"])
    evaluated = run(with_harness)
    plain = run(tiny_cfg(tmp_path / "b", common))
    found = sorted(p.name for p in (tmp_path / "a" / "run" / "harness").iterdir())
    assert found == [f"step{s:06d}.json" for s in steps]
    assert {k for k in evaluated if k.startswith("eval/")} == {"eval/sums_mc/acc"}  # the run returns lm-eval's too
    trained = {k: v for k, v in evaluated.items() if not k.startswith("eval/")}
    assert trained.keys() == plain.keys() and "val/loss" in plain
    for key in plain:
        assert trained[key] == plain[key], key
    saved = json.loads((tmp_path / "a" / "run" / "harness" / f"step{steps[-1]:06d}.json").read_text())
    assert saved["n-samples"]["sums_mc"]["effective"] == 16 and saved["config"]["model_num_parameters"] > 0
