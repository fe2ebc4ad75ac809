"""The online-RL batch hierarchy in the plan: rollout -> mini-batches -> micro-batches, episodes, refusals."""

from __future__ import annotations

import pytest

from hydralign.data.rollouts import RolloutSchedule
from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from tests.helpers import compose_cfg


def test_hierarchy_derived_and_printed():
    plan = make_plan(compose_cfg(["method=grpo", "method.prompts_per_step=16", "method.num_generations=8",
                                  "method.num_mini_batches=4", "method.num_iterations=2", "batch.micro=8",
                                  "trainer.max_steps=40"]))
    r = plan.rollout
    assert (r.samples_per_rollout, r.mini_batch_samples, r.micro_batch_samples_per_device,
            r.grad_accum_per_mini_batch, r.steps_per_rollout, r.total_rollouts) == (128, 32, 8, 4, 8, 5)
    assert (plan.effective_batch, plan.micro_batch, plan.grad_accum, plan.total_steps) == (32, 8, 4, 40)
    assert plan.steps_per_epoch == 20000 // 16 * 8
    text = format_plan(plan)
    assert "128 = 16 prompts x 8 generations" in text and "8 = 4 mini-batches x 2 iterations" in text


def test_total_episodes_sets_the_steps():
    plan = make_plan(compose_cfg(["method=grpo", "method.prompts_per_step=16", "method.num_generations=8",
                                  "method.total_episodes=1000"]))
    assert plan.rollout.total_rollouts == 7 and plan.total_steps == 7  # 1000 // 128 whole rollout batches


@pytest.mark.parametrize("overrides, pattern", [
    (["method.num_mini_batches=3"], r"128 samples .*not divisible by method.num_mini_batches=3"),
    (["batch.micro=6"], r"local mini-batch of 128 .* not divisible by batch.micro=6"),
    (["trainer.max_steps=5", "method.num_iterations=2"], r"trainer.max_steps=5 is not a multiple of the 2"),
    (["method.total_episodes=100"], r"total_episodes=100 is less than one rollout batch of 128"),
    (["method.num_generations=1"], r"num_generations=1 must be >= 2"),
    (["method.loss_type=ppo"], r"loss_type=ppo is unknown"),
    (["method.epsilon_high=0.1"], r"epsilon_high=0.1 is below method.epsilon=0.2"),
    (["+method.rewards.nope=1.0"], r"unknown verifiers \['nope'\]"),
    (["+method.rewards_by_source.gsm8k.last_number=1.0", "+method.rewards_by_source.math.boxd=1.0"],
     r"method.rewards_by_source.math names unknown verifiers \['boxd'\]"),
])
def test_refusals_name_both_numbers(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(["method=grpo", "method.prompts_per_step=16", "method.num_generations=8"] + overrides))


def test_prompts_must_split_over_devices():
    with pytest.raises(ConfigError, match=r"prompts_per_step=12 is not divisible by world_size 8"):
        make_plan(compose_cfg(["method=grpo", "hardware=8xA100", "method.prompts_per_step=12"]))


def test_schedule_reshuffles_each_epoch_and_slices_micro_batches():
    plan = make_plan(compose_cfg(["method=grpo", "method.prompts_per_step=4", "method.num_generations=2",
                                  "method.num_mini_batches=2", "batch.micro=2", "trainer.max_steps=8"]),
                     num_train_examples=8)
    s = RolloutSchedule(8, plan.rollout, rank=0, seed=3)
    epoch0 = s.prompts(0) + s.prompts(1)
    assert sorted(epoch0) == list(range(8)) and s.prompts(2) + s.prompts(3) != epoch0
    items = [s.micro_batch(i) for i in range(4)]  # rollout 0: 2 mini-batches x 2 micro-batches of 2 samples
    assert [(x["rollout"], x["mini"], x["samples"], x["window_last"]) for x in items] == [
        (0, 0, (0, 2), False), (0, 0, (2, 4), True), (0, 1, (4, 6), False), (0, 1, (6, 8), True)]
    assert s.micro_batch(4)["rollout"] == 1 and s.micro_batch(4)["first_step"]


def test_tulu3_rlvr_card_hierarchy():
    """REPRODUCTIONS.md section 2: 7 learners x local mini-batch 32 = 224 per step, 10,000,000 episodes."""
    plan = make_plan(compose_cfg(["experiment=tulu3_8b_rlvr"]))
    r = plan.rollout
    assert (plan.world_size, r.mini_batch_samples_per_device, r.mini_batch_samples, r.samples_per_rollout) == \
        (7, 32, 224, 224)
    assert (plan.micro_batch, plan.grad_accum, r.steps_per_rollout) == (2, 16, 1)
    assert (r.total_episodes, plan.total_steps) == (10_000_000, 10_000_000 // 224)
    assert (plan.lr, plan.schedule, plan.seed, r.max_completion_length) == (3e-7, "linear", 3, 2048)
    assert any("reference" in f for f in plan.frozen_models)  # beta 0.05
    text = format_plan(plan)
    assert "224 = rollout 224 / 1 mini-batches = 7 devices x local 32" in text
    assert "10000000 budget -> 44642 rollout batches x 224" in text
    assert plan.checkpoint_every_n_steps == 100 == plan.eval_every_n_steps  # --save_freq 100, each validated
    assert "every 22400 episodes = 100 optimizer steps x 224 episodes" in text


def test_checkpoints_every_n_episodes_become_validated_steps():
    """16 prompts x 8 = 128 episodes per rollout; 2 mini-batches x 2 iterations = 4 steps of 32 episodes each."""
    base = ["method=grpo", "method.prompts_per_step=16", "method.num_generations=8", "trainer.max_steps=80"]
    plan = make_plan(compose_cfg(base + ["checkpoint.every_n_episodes=1280", "eval.every_n_steps=5"]))
    assert plan.checkpoint_every_n_steps == 10 and plan.rollout.checkpoint_every_n_episodes == 1280
    assert "every 1280 episodes = 10 optimizer steps x 128 episodes, each validated" in format_plan(plan)
    plan = make_plan(compose_cfg(base + ["method.num_mini_batches=2", "method.num_iterations=2",
                                         "checkpoint.every_n_episodes=96", "eval.every_n_steps=3"]))
    assert plan.checkpoint_every_n_steps == 3 and plan.rollout.episodes_per_step == 32
    assert make_plan(compose_cfg(base + ["checkpoint.every_n_steps=7"])).checkpoint_every_n_steps == 7
    assert make_plan(compose_cfg(base)).checkpoint_every_n_steps is None


GRPO_16x8 = ["method=grpo", "method.prompts_per_step=16", "method.num_generations=8"]


@pytest.mark.parametrize("overrides, pattern", [
    (GRPO_16x8 + ["checkpoint.every_n_episodes=200"],
     r"every_n_episodes=200 is not a whole number of optimizer steps of 128 episodes .*multiple of 128, e.g. "
     r"checkpoint.every_n_episodes=256"),
    (GRPO_16x8 + ["checkpoint.every_n_episodes=1280", "eval.every_n_steps=4"],
     r"every_n_episodes=1280 is every 10 optimizer steps, but eval.every_n_steps=4 does not divide 10"),
    (GRPO_16x8 + ["checkpoint.every_n_episodes=1280", "checkpoint.every_n_steps=10"],
     r"checkpoint.every_n_steps \(10\) or checkpoint.every_n_episodes \(1280\), not both"),
    (["checkpoint.every_n_episodes=1280"], r"every_n_episodes=1280 counts the episodes .* method=sft"),
])
def test_checkpoints_every_n_episodes_refusals(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_learners_and_generators():
    """hardware.generator_devices: 0 (the learners generate) and N >= 1 generator processes beside the learners, each
    printed; what cannot run is refused in the plan with the override that fixes it."""
    text = format_plan(make_plan(compose_cfg(["experiment=tulu3_8b_rlvr", "hardware.generator_devices=0",
                                              "hardware.devices_per_node=7", "generation=hf",
                                              "method.max_staleness=0"])))
    assert "7 learner devices (world_size) + 0 generator devices: each learner samples its own prompts" in text
    plan = make_plan(compose_cfg(["method=grpo", "hardware=cpu_2proc", "hardware.generator_devices=1",
                                  "method.max_staleness=1"]))
    assert plan.world_size == 1 and plan.devices_per_node == 1 and plan.rollout.generator_devices == 1
    assert ("1 learner devices (world_size) + 1 generator devices (hf): the generators sample rollout batches up to 1 "
            "ahead of training") in format_plan(plan)
    with pytest.raises(ConfigError, match=r"generator_devices=1: method=sft does not generate while training"):
        make_plan(compose_cfg(["hardware=8xH100", "hardware.generator_devices=1"]))
    with pytest.raises(ConfigError, match=r"generator_devices=8 leaves no learner among the 8 devices"):
        make_plan(compose_cfg(["method=grpo", "hardware=8xH100", "hardware.generator_devices=8"]))


GEN = ["method=grpo", "hardware=cpu_2proc", "hardware.generator_devices=1"]


@pytest.mark.parametrize("overrides, pattern", [
    (["method=grpo", "method.max_staleness=1"],
     r"max_staleness=1 cannot be honoured: with hardware.generator_devices=0 .* set hardware.generator_devices=1"),
    (GEN + ["method.num_mini_batches=2", "method.weight_sync_steps=3"],
     r"weight_sync_steps=3 does not divide the 2 optimizer steps per rollout batch.*method.weight_sync_steps=1"),
    (GEN + ["generation.backend=vllm"], r"generation.backend=vllm needs a CUDA GPU .* or generation.backend=hf"),
    (["method=grpo", "generation.backend=vllm"], r"builds a vLLM engine in each learner.*or generation.backend=hf"),
    (["method=grpo", "generation.backend=sglang"], r"generation.backend=sglang is unknown; choose from hf, vllm"),
    (GEN + ["hardware.devices_per_node=3", "hardware.generator_devices=2"],
     r"generator_devices=2 exceeds the 1 learners"),
    (GEN + ["peft=lora"], r"peft=lora: the generators take whole weights.*peft=none"),
    (GEN + ["method.importance_sampling_mode=tis"], r"importance_sampling_mode=tis is unknown; choose from "
                                                    r"token_truncate, token_mask, sequence_truncate, sequence_mask"),
    (GEN + ["method.importance_sampling_clip_max=0.5", "method.importance_sampling_clip_min=1"], r"0 <= min < max"),
])
def test_generator_refusals(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_tulu_card_plans_7_learners_and_a_vllm_generator_and_a_machine_without_vllm_refuses_it(monkeypatch):
    """The Tulu card as the paper ran it: its dry run prints 7 learners + 1 vLLM generator on any machine; a real run
    checks, beside the device count, that vllm imports where the generator will run (this machine has no vllm)."""
    import importlib.util

    from hydralign.distributed.machine import check_generation_backend

    cfg = compose_cfg(["experiment=tulu3_8b_rlvr"])
    text = format_plan(make_plan(cfg))
    assert "7 learner devices (world_size) + 1 generator devices (vllm)" in text
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"vllm package cannot be imported on this machine.*pip install vllm"):
            check_generation_backend(cfg)
    else:
        check_generation_backend(cfg)
    hf = compose_cfg(["experiment=tulu3_8b_rlvr", "generation.backend=hf"])
    check_generation_backend(hf)  # nothing to import
    monkeypatch.setenv("LOCAL_RANK", "0")  # a rank torchrun or srun started: the launch must hold the generator too
    monkeypatch.setenv("WORLD_SIZE", "7")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=7 tasks.*the last 1 ranks generate"):
        check_generation_backend(hf)
