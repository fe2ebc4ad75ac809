"""Distillation for real on the embedded task: an SFT run (the ``sft_trained`` session fixture, the
default tiny model) taught to a smaller random-init student; the teacher stays frozen and out of the
optimizer; the batch split changes no gradient (MiniLLM's sampling included); seqkd's teacher answers are
generated once and cached; a teacher with another tokenizer is refused before it loads."""

from __future__ import annotations

import json

import pytest
import torch

from hydralign.errors import ConfigError
from hydralign.run.job import run
from tests.helpers import tiny_cfg
from tests.recorder import Recorder

# Half the teacher's depth (the default tiny model has 4 layers). A 64-wide student (head size 16) stays at
# val exact match ~0.03 after 600 steps whether distilled or fine-tuned: too small for this task here.
STUDENT = ["model.num_layers=2"]
# The sft_trained fixture's task (2-digit sums), small and quiet.
TASK = ["data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000", "data.arithmetic.num_val=128"]
QUIET = ["logger=none", "eval.at_start=false", "eval.every_n_steps=1000", "eval.num_generate=0",
         "checkpoint.save_last=false", "checkpoint.export_hf=false", "checkpoint.monitor=val/loss",
         "checkpoint.mode=min", "optimized_metric=val/loss", "schedule=constant"]


def _distill(tmp, teacher, overrides) -> tuple[dict, Recorder]:
    rec = Recorder()
    cfg = tiny_cfg(tmp, ["method=distill", f"method.teacher_from={teacher}"] + STUDENT + overrides)
    return run(cfg, callbacks=[rec]), rec


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    """A random-init tiny model exported with the char tokenizer: a teacher for the mechanics (no training)."""
    from hydralign.checkpoints.saving import export_hf
    from hydralign.data.chat import template_for
    from hydralign.models import build_model, build_tokenizer

    cfg = tiny_cfg(tmp_path_factory.mktemp("t"), ["model.hidden_size=64", "model.num_layers=2"])
    template = template_for(cfg.model.chat_template)
    tok = build_tokenizer(cfg.model, template)
    out = tmp_path_factory.mktemp("random_teacher") / "hf_model"
    model = build_model(cfg.model, tok, seed=7)
    return export_hf(model, tok, out, tok.convert_tokens_to_ids(template.stop_tokens(tok.eos_token)))


def test_distillation_teaches_a_smaller_student(sft_trained, tmp_path):
    """forward KL from the SFT run into a random-init student with fewer layers (2 of 3): its val metrics go from
    nothing to the teacher's (measured with the old 4-layer default on the old task encoding: exact match 0 ->
    0.05 -> 0.95 -> 1.0 at steps 0/300/600/900, KD 4.70 -> 0.01, agreement 0.02 -> 1.0; then the student, like
    SFT, first sat on the task's loss plateau, which issue 15's encoding removed)."""
    _, sft_metrics, sft_tmp = sft_trained
    cfg = tiny_cfg(tmp_path, ["method=distill", f"method.teacher_from={sft_tmp / 'run'}"] + STUDENT + TASK + [
        "eval.num_generate=128", "trainer.max_steps=900", "eval.every_n_steps=300", "trainer.log_every_n_steps=10",
        "checkpoint.save_last=false", "checkpoint.export_hf=false"])
    metrics = run(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text()

    def hist(key):
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    val_em, val_nll, val_kd = hist("val/exact_match"), hist("val/distill/nll"), hist("val/distill/kd")
    agree, train_loss = hist("val/distill/agreement"), hist("train/loss")
    print(f"\nstudent val exact match {val_em}, nll {val_nll}, kd {val_kd}, agreement {agree}; "
          f"teacher val exact match {sft_metrics['val/exact_match']:.3f}")
    assert len(val_em) == 4  # step 0 (random init), 300, 600, 900
    assert val_em[0] == 0.0 and val_em[-1] >= 0.5  # the random-init student answers nothing right at first
    assert val_nll[-1] < 0.2 * val_nll[0] and val_kd[-1] < 0.1 * val_kd[0]
    assert agree[-1] > 0.9 > 0.1 > agree[0]
    assert sum(train_loss[-3:]) / 3 < 0.1 * sum(train_loss[:3]) / 3  # the KD loss falls
    assert metrics["val/loss"] == pytest.approx(metrics["val/distill/kd"], rel=1e-6)  # sft_weight 0: loss = KD
    tags = client.get_run(run_id).data.tags
    assert tags["method"] == "distill" and "lineage.teacher.path" in tags


def test_the_teacher_is_frozen_outside_the_optimizer_and_the_checkpoint(random_teacher, tmp_path):
    from safetensors.torch import load_file

    _, rec = _distill(tmp_path, random_teacher, QUIET + ["trainer.max_steps=3", "batch.effective=8", "lr=1e-2"])
    module = rec.module
    teacher = module._frozen["teacher"]
    assert teacher is not module.model and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    in_optimizer = {id(p) for g in rec.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert in_optimizer == {id(p) for p in module.model.parameters()}
    assert all(k.startswith("model.") for k in module.state_dict())  # no teacher weights in a checkpoint
    saved = load_file(str(random_teacher / "model.safetensors"))
    for name, p in teacher.named_parameters():  # the student moved (lr 1e-2), the teacher did not
        torch.testing.assert_close(p.detach().cpu(), saved[name], atol=0, rtol=0, msg=name)
    assert len(rec.losses) == 3 and all(torch.isfinite(torch.tensor(rec.losses)))


@pytest.mark.parametrize("loss", ["jsd", "minillm"])
def test_the_batch_split_changes_no_gradient(random_teacher, tmp_path, loss):
    """micro 8 x accum 1 vs micro 2 x accum 4: the same gradient at step 1, also for MiniLLM, whose samples
    are drawn per example (not per batch) and whose generated tokens enter per sequence."""
    extra = ["method.teacher_mix=0.2", "method.sft_weight=0.5"] if loss == "minillm" else ["method.jsd_beta=0.3"]
    recs = {}
    for micro in (8, 2):
        _, recs[micro] = _distill(tmp_path / str(micro), random_teacher, QUIET + extra + [
            f"method.loss={loss}", "batch.effective=8", f"batch.micro={micro}", "trainer.max_steps=2"])
    a, b = recs[8], recs[2]
    assert set(a.first_grads) == set(b.first_grads) and a.first_grads
    for name, grad in a.first_grads.items():
        torch.testing.assert_close(b.first_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert a.losses == pytest.approx(b.losses, abs=1e-5)
    assert sum(g.abs().sum() for g in a.first_grads.values()) > 0


def test_minillm_trains_the_student_from_the_teachers_signal(sft_trained, tmp_path):
    _, _, sft_tmp = sft_trained
    metrics, rec = _distill(tmp_path, sft_tmp / "run", TASK + QUIET + [
        "method.loss=minillm", "method.teacher_mix=0.2", "method.sft_weight=1.0", "trainer.max_steps=4",
        "batch.effective=16", "lr=3e-3", "method.max_new_tokens=8", "trainer.log_every_n_steps=1"])
    trained = {n: p.detach().clone() for n, p in rec.module.model.named_parameters()}
    keys = ("val/loss", "val/distill/kd", "val/distill/nll", "val/distill/agreement", "val/distill/length_ratio",
            "val/minillm/reward", "val/minillm/weight", "train/loss", "distill/kd", "minillm/reward")
    for key in keys:
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), (key, metrics)
    assert metrics["val/distill/kd"] > 0 and metrics["val/minillm/weight"] == pytest.approx(1.0)  # alpha 0 in val
    assert 0 < metrics["minillm/weight"] and metrics["val/distill/length_ratio"] > 0
    assert len(rec.losses) == 4 and rec.first_grads
    # The student changed: its step-1 gradient is not zero and the weights differ from a fresh init.
    from hydralign.models import build_model

    fresh = build_model(rec.module.cfg.model, rec.module.tokenizer, rec.module.cfg.seed)
    moved = sum((trained[n] - p.detach()).abs().sum() for n, p in fresh.named_parameters())
    assert moved > 0 and sum(g.abs().sum() for g in rec.first_grads.values()) > 0


def test_seqkd_learns_from_cached_teacher_answers(sft_trained, tmp_path, monkeypatch):
    from hydralign.methods import distill

    sft_cfg, sft_metrics, sft_tmp = sft_trained
    cache = tmp_path / "cache"
    common = TASK + QUIET + ["method.loss=seqkd", f"method.cache_dir={cache}", "trainer.max_steps=3",
                             "batch.effective=16", "eval.at_start=true"]
    first, rec = _distill(tmp_path / "first", sft_tmp / "run", common)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    described = json.loads(files[0].with_suffix(".json").read_text())
    assert described["prompts"]["train"]["count"] == 4000 and described["decoding"]["rule"] == "greedy"
    # The teacher's answers are what it generates: as often right as its own exact match says.
    module = rec.module
    answers, gold = module.generations["val"], module.trainer.datamodule.val_examples
    assert len(answers) == len(gold) == 128

    def answer(ex):  # the target tokens: the answer and its closing marker
        return [t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]

    assert all(a.input_ids[:len(a.input_ids) - len(answer(a))] == g.input_ids[:len(g.input_ids) - len(answer(g)) - 1]
               for a, g in zip(answers, gold))  # the same prompt (gold ends with an untrained newline)
    right = sum(answer(a) == answer(g) for a, g in zip(answers, gold))
    assert right / len(answers) == pytest.approx(sft_metrics["val/exact_match"], abs=0.05)
    assert 0.5 < first["val/distill/length_ratio"] < 2.0 and first["val/distill/agreement"] > 0
    # Where the teacher answers as the data does, seqkd is SFT: step 1's gradient is SFT's on the same window.
    from hydralign.data.batching import WindowSchedule

    train = module.trainer.datamodule.train_examples
    window = WindowSchedule([e.num_loss_tokens for e in train], 16, 16, 1, 0, 0).window(0).tolist()
    assert all(answer(module.generations["train"][i]) == answer(train[i]) for i in window)  # (true here)
    sft = Recorder()
    run(tiny_cfg(tmp_path / "sft", STUDENT + TASK + QUIET + ["trainer.max_steps=1", "batch.effective=16"]),
        callbacks=[sft])
    for name, grad in sft.first_grads.items():
        torch.testing.assert_close(rec.first_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)

    def no_teacher(*a, **k):
        raise AssertionError("a cache hit loads no teacher")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    _, again = _distill(tmp_path / "second", sft_tmp / "run", common + ["lr=3e-4"])  # another job of an lr sweep
    assert again.module.generations == module.generations and list(cache.glob("*.safetensors")) == files


def test_a_teacher_with_another_tokenizer_is_refused_before_it_loads(random_teacher, tmp_path, monkeypatch):
    import shutil

    from transformers import AutoTokenizer

    from hydralign.methods import distill

    other = tmp_path / "other_teacher"
    shutil.copytree(random_teacher, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<|tool|>"], special_tokens=True)  # one more special token: ids and vocabulary differ
    tok.save_pretrained(str(other))
    monkeypatch.setattr(distill, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(ConfigError, match=r"does not share the student's tokenizer.*<\|tool\|>"):
        _distill(tmp_path / "run", other, QUIET + ["trainer.max_steps=1"])
