"""GRPO for real on the embedded task: from the SFT run the sampled reward rises, and a verifier that
raises on some samples scores them 0, is counted, and does not stop the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from hydralign import rewards as R
from hydralign.errors import ConfigError
from hydralign.run.job import run
from tests.helpers import tiny_cfg

TASK = ["method=grpo", "logger=none", "data.arithmetic.max_digits=2", "data.arithmetic.num_train=4000",
        "data.arithmetic.num_val=128", "checkpoint.save_last=false", "checkpoint.export_hf=false",
        "trainer.log_every_n_steps=1", "eval.max_new_tokens=4", "method.prompts_per_step=16",
        "method.num_generations=8", "batch.micro=32"]


class Rewards(Callback):
    """Each optimizer step's logged train metrics."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch["window_last"]:
            self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_grpo_from_sft_raises_the_reward(sft_trained, tmp_path):
    _, sft_metrics, sft_tmp = sft_trained
    rec = Rewards()
    # Sampling at temperature 2 makes the SFT policy's answers right 15-27% of the time (greedy: 0.84-0.99; the
    # SFT fixture's end point depends on the CPU thread count): GRPO sharpens it, so the sampled reward rises
    # (0.14 -> 0.25 with the 0.84 fixture, 0.27 -> 0.40 with the 0.99 one, first vs last 10 steps) while the
    # greedy answers stay (exact match -0.02 and 0.00). lr 1e-4 rises as fast but costs up to 0.07 greedy.
    metrics = run(tiny_cfg(tmp_path, TASK + [f"init_from={sft_tmp / 'run'}", "trainer.max_steps=80", "lr=5e-5",
                                             "method.temperature=2.0", "eval.num_generate=128",
                                             "eval.every_n_steps=80"]), callbacks=[rec])
    curve = [s["rewards/mean"] for s in rec.steps]
    assert len(curve) == 80 and rec.steps[-1]["episodes"] == 80 * 128
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert last > first + 0.05, curve
    assert metrics["val/exact_match"] >= sft_metrics["val/exact_match"] - 0.1  # greedy answers kept
    for key in ("kl", "clip_fraction", "completion_length", "truncated_fraction", "accuracy", "rewards/std",
                "rewards/exact_answer/mean", "time/generation_s", "time/training_s"):
        assert key in rec.steps[-1], key


def test_a_raising_verifier_scores_zero_and_the_run_goes_on(sft_trained, tmp_path, monkeypatch):
    _, _, sft_tmp = sft_trained

    def flaky(completion, reference):
        if completion.strip() != reference.strip():
            raise ValueError("cannot parse")
        return 1.0

    monkeypatch.setitem(R.REWARDS, "flaky", flaky)
    rec = Rewards()
    metrics = run(tiny_cfg(tmp_path, TASK + [f"init_from={sft_tmp / 'run'}", "trainer.max_steps=3",
                                             "+method.rewards.flaky=0.5", "eval.num_generate=0",
                                             "method.temperature=2.0",  # wrong samples even from a perfect policy
                                             "checkpoint.monitor=val/loss", "checkpoint.mode=min",
                                             "optimized_metric=val/loss"]), callbacks=[rec])
    assert metrics["train/steps"] == 3
    assert all(s["rewards/flaky/errors"] > 0 for s in rec.steps)  # the wrong samples raised, each counted
    for s in rec.steps:  # the flaky verifier scored exactly the right answers, 0 for the ones it raised on
        assert s["rewards/flaky/mean"] == s["rewards/exact_answer/mean"]
        assert abs(s["rewards/mean"] - 1.5 * s["rewards/exact_answer/mean"]) < 1e-6


def tulu_shaped_files(tmp_path: Path) -> list[str]:
    """Records shaped like the card's data (messages = the user turn, ground_truth, dataset), a third each of
    GSM8K, MATH and IFEval (its ground truth open-instruct's {"func_name": ...} form), as data=jsonl overrides."""
    sources = ["gsm8k", "MATH", "ifeval"]
    lowercase = json.dumps({"func_name": "validate_lowercase", "N": None, "quantifier": None})
    for name, n in (("train", 64), ("val", 8)):
        with open(tmp_path / f"{name}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"messages": [{"role": "user", "content": f"{i}+{i}="}],
                                     "ground_truth": lowercase if i % 3 == 2 else str(2 * i),
                                     "dataset": sources[i % 3]}) + "\n")
    return ["data=jsonl", f"data.train_files=[{tmp_path / 'train.jsonl'}]", f"data.val_files=[{tmp_path / 'val.jsonl'}]",
            "data.max_seq_len=64", "data.messages_field=no_messages_field", "data.prompt_field=messages",
            "data.completion_field=ground_truth"]


TULU_TINY = ["experiment=tulu3_8b_rlvr", "model=tiny", "model.name=tiny", "model.name_or_path=null", "hardware=cpu",
             "hardware.devices_per_node=1", "hardware.generator_devices=0", "generation.backend=hf",
             "method.max_staleness=0", "batch.micro=16", "method.prompts_per_step=4", "method.total_episodes=64",
             "method.max_completion_length=6", "eval.max_new_tokens=6", "eval.num_generate=4", "eval.batch_size=4",
             "checkpoint.export_hf=false", "logger=none", "trainer.log_every_n_steps=1",
             "eval.harness.every=none"]  # the card's lm-eval tasks read the hub


class Routed(Callback):
    """Each rollout batch's prompt sources and per-sample rewards."""

    def __init__(self):
        self.rollouts: list[tuple[list, list[float]]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch["first_step"] and batch["samples"][0] == 0:
            self.rollouts.append((list(batch["sources"]), module._rollout.sample_metrics["rewards/mean"][0].tolist()))


def test_tulu3_rlvr_card_trains_at_tiny_scale_routing_each_source(tmp_path, monkeypatch):
    """The card's method settings (beta 0.05 with a frozen reference, masked truncations, a total_episodes budget,
    checkpoints every N episodes) run for real on the tiny model: 2 rollout batches of 4 prompts x 8. Each sample
    is scored by its source's verifiers (stand-ins with known values): GSM8K 1.0, MATH 0.25, IFEval 0.75 (the
    fallback table's exact_answer, 0.5 weighing 0, scores none). Checkpoints every 32 episodes (1 step) are validated: :best picks one."""
    monkeypatch.setitem(R.REWARDS, "last_number", lambda completion, reference: 1.0)
    monkeypatch.setitem(R.REWARDS, "boxed", lambda completion, reference: 0.25)
    monkeypatch.setitem(R.REWARDS, "exact_answer", lambda completion, reference: 0.5)
    monkeypatch.setitem(R.REWARDS, "ifeval", lambda completion, reference: 0.75)
    rec, routed = Rewards(), Routed()
    metrics = run(tiny_cfg(tmp_path, TULU_TINY + tulu_shaped_files(tmp_path) + [
        "checkpoint.every_n_episodes=32", "eval.every_n_steps=1", "checkpoint.keep_last_k=5"]), callbacks=[rec, routed])
    assert metrics["train/steps"] == 2 and rec.steps[-1]["episodes"] == 64
    want = {"gsm8k": 1.0, "MATH": 0.25, "ifeval": 0.75}
    assert len(routed.rollouts) == 2
    for (sources, rewards), step in zip(routed.rollouts, rec.steps):
        assert rewards == [want[s] for s in sources for _ in range(8)], (sources, rewards)
        assert step["rewards/last_number/mean"] == (1.0 if "gsm8k" in sources else 0.0)  # over its own samples
        assert step["rewards/boxed/mean"] == (0.25 if "MATH" in sources else 0.0)
        assert step["rewards/ifeval/mean"] == (0.75 if "ifeval" in sources else 0.0)
        # right = its own table's best total: GSM8K's 1.0 of 1.0, not MATH's 0.25 of 1.0 nor IFEval's 0.75 of 1.0
        assert step["accuracy"] == pytest.approx(sources.count("gsm8k") / 4)
    assert rec.steps[-1]["kl"] >= 0.0
    index = json.loads((tmp_path / "run" / "checkpoints" / "index.json").read_text())
    steps = sorted(c["step"] for name, c in index["checkpoints"].items() if name.startswith("step"))
    assert steps == [1, 2]
    from hydralign.checkpoints.references import forget, resolve_reference

    forget()
    assert resolve_reference(f"{tmp_path / 'run'}:best").lineage["step"] in ("1", "2")


def test_a_routed_source_the_data_lacks_is_refused_before_models_load(tmp_path, monkeypatch):
    monkeypatch.setattr("hydralign.models.build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ConfigError, match=r"method.rewards_by_source.gsm8kk matches no train prompt's source; the "
                                          r"data's sources .*\['MATH', 'gsm8k', 'ifeval'\]"):
        run(tiny_cfg(tmp_path, TULU_TINY + tulu_shaped_files(tmp_path) + ["+method.rewards_by_source.gsm8kk.boxed=1"]))


class FirstGrads(Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def test_the_split_into_micro_batches_does_not_change_the_gradient(sft_trained, tmp_path):
    """DESIGN.md section 5 for GRPO: the rollout is seeded from (seed, rollout, rank), so micro 32 x accum 4
    and micro 8 x accum 16 see the same samples; dapo's token sum is divided once by the mini-batch's tokens."""
    _, _, sft_tmp = sft_trained
    grads = []
    for micro in (32, 8):
        rec = FirstGrads()
        run(tiny_cfg(tmp_path / str(micro), TASK + [f"init_from={sft_tmp / 'run'}", "trainer.max_steps=1",
                                                    f"batch.micro={micro}", "method.temperature=2.0",
                                                    "eval.num_generate=0", "eval.at_start=false",
                                                    "checkpoint.monitor=val/loss", "checkpoint.mode=min",
                                                    "optimized_metric=val/loss"]), callbacks=[rec])
        grads.append(rec.grads)
    assert grads[0].keys() == grads[1].keys() and any(float(g.abs().sum()) > 0 for g in grads[0].values())
    for name, g in grads[0].items():
        assert (g - grads[1][name]).abs().max() <= 1e-6 * max(1.0, float(g.abs().max())), name


def test_a_source_routed_to_ifeval_without_ifeval_keys_is_refused_before_models_load(tmp_path, monkeypatch):
    monkeypatch.setattr("hydralign.models.build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ConfigError, match=r"routes 21 train prompts to the ifeval verifier, which can score none"):
        run(tiny_cfg(tmp_path, TULU_TINY + tulu_shaped_files(tmp_path) + ["+method.rewards_by_source.math.ifeval=1",
                                                                              "~method.rewards_by_source.ifeval"]))
