"""The plan's per-device memory estimate (hydralign/plan/memory.py): each piece against hand arithmetic for a small
config, the fit verdict, its warning text and the overrides it suggests."""

from __future__ import annotations

import pytest

from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from hydralign.plan.memory import GIB
from tests.helpers import compose_cfg

# model=tiny with a 100-token vocabulary: h=128, 4 layers, 4 heads (kv = h), I=256, untied head.
SMALL = ["model=tiny", "model.vocab_size=100", "model.num_heads=4", "model.num_layers=4", "data.max_seq_len=64",
         "batch.effective=8", "batch.micro=8"]
EMBED = 100 * 128  # 12,800 (input embedding; the untied head is as large)
LAYER = 2 * 128 * 128 + 2 * 128 * 128 + 3 * 128 * 256 + 2 * 128  # q,o + k,v + gate,up,down + 2 norms = 164,096
P = 2 * EMBED + 4 * LAYER + 128  # + final norm = 682,112
TOKENS = 8 * 64  # micro x max_seq_len
# Activations per token and layer, fp32 (r = a = 4 bytes): 6h x r + (3h + 2kv + 4I) x a + (2 + heads) x 4
LAYER_ACT = 6 * 128 * 4 + (3 * 128 + 2 * 128 + 4 * 256) * 4 + (2 + 4) * 4  # 3072 + 6656 + 24 = 9,752
FINAL_NORM = 3 * 128 * 4  # 1,536


def _mem(overrides):
    return make_plan(compose_cfg(SMALL + overrides)).memory


def _bytes(gib):
    return gib * GIB


def test_full_fp32_sft_pieces():
    m = _mem(["hardware=cpu"])
    assert P == 682_112 and m.trainable_params == P
    assert _bytes(m.parameters_gib) == pytest.approx(4 * P)
    assert _bytes(m.gradients_gib) == pytest.approx(4 * P)
    assert _bytes(m.optimizer_gib) == pytest.approx(8 * P)  # AdamW m and v, fp32
    assert _bytes(m.activations_gib) == pytest.approx(TOKENS * (4 * LAYER_ACT + FINAL_NORM))  # 20,758,528
    assert _bytes(m.logits_gib) == pytest.approx(TOKENS * 100 * 12)  # 614,400
    assert m.frozen_gib == 0 and m.fits is None and m.device_gib is None
    assert _bytes(m.total_gib) == pytest.approx(16 * P + 20_758_528 + 614_400)  # 32,286,720


def test_checkpointing_keeps_layer_inputs_plus_one_layer():
    m = _mem(["model.gradient_checkpointing=true"])
    assert _bytes(m.activations_gib) == pytest.approx(TOKENS * (4 * 128 * 4 + LAYER_ACT + FINAL_NORM))


def test_chunked_loss_holds_two_chunks_of_logits_and_the_loss_rows():
    m = _mem(["model.loss_chunk_size=100"])
    assert _bytes(m.logits_gib) == pytest.approx(2 * 100 * 100 * 4 + TOKENS * 128 * 4)  # 80,000 + 262,144


def test_other_optimizers():
    assert _bytes(_mem(["optimizer=sgd", "optimizer.momentum=0.9"]).optimizer_gib) == pytest.approx(4 * P)
    assert _mem(["optimizer=sgd", "optimizer.momentum=0.0"]).optimizer_gib == 0
    assert _mem(["optimizer=adafactor"]).optimizer_gib == 0  # factored: rows + columns, counted as 0


def test_dpo_holds_a_reference_copy_and_two_rows_per_pair():
    m = _mem(["method=dpo"])
    assert m.tokens_per_micro == 2 * TOKENS
    assert _bytes(m.frozen_gib) == pytest.approx(4 * P)
    assert _bytes(m.logits_gib) == pytest.approx(2 * TOKENS * 100 * 12)
    assert _mem(["method=dpo", "method.precompute_ref=true"]).frozen_gib == 0


def test_lora_trains_adapters_only_and_needs_no_reference_copy():
    m = _mem(["method=dpo", "peft=lora", "peft.r=8"])
    # r x (q 2h + k (h+kv) + v (h+kv) + o 2h + gate (h+I) + up (h+I) + down (I+h)) x layers = 8 x 2176 x 4
    lora = 8 * (256 + 256 + 256 + 256 + 384 + 384 + 384) * 4
    assert lora == 69_632 and m.trainable_params == lora
    assert _bytes(m.parameters_gib) == pytest.approx(4 * P + 4 * lora)  # frozen fp32 base + fp32 adapters
    assert _bytes(m.gradients_gib) == pytest.approx(4 * lora)
    assert _bytes(m.optimizer_gib) == pytest.approx(8 * lora)
    assert m.frozen_gib == 0


def test_fsdp_mixed_precision_shards_states_and_gathers_two_layers_and_the_root():
    m = _mem(["hardware=8xA100", "batch.effective=64"])  # world 8, bf16-mixed, fp32 weights
    assert _bytes(m.parameters_gib) == pytest.approx(4 * P / 8 + 2 * (2 * LAYER + 2 * EMBED))
    assert _bytes(m.gradients_gib) == pytest.approx(4 * P / 8)
    assert _bytes(m.optimizer_gib) == pytest.approx(8 * P / 8)
    # bf16 compute (a = 2), fp32 residual stream (r = 4), + the 16-bit casts of the two norm outputs (2h x 2)
    layer = 6 * 128 * 4 + (3 * 128 + 2 * 128 + 4 * 256) * 2 + (2 + 4) * 4 + 2 * 128 * 2
    assert _bytes(m.activations_gib) == pytest.approx(TOKENS * (4 * layer + FINAL_NORM))
    assert m.device_gib == 80 and m.fits is True


def test_deepspeed_zero_stages_and_offload():
    base = ["hardware=8xA100", "batch.effective=64", "hardware.strategy=deepspeed"]
    z1, z2, z3 = (_mem(base + [f"hardware.zero_stage={s}"]) for s in (1, 2, 3))
    # mixed precision: 2-byte weights and gradients, fp32 master + m + v = 12 bytes of optimizer state
    assert _bytes(z1.parameters_gib) == pytest.approx(2 * P) and _bytes(z1.gradients_gib) == pytest.approx(2 * P)
    assert _bytes(z1.optimizer_gib) == pytest.approx(12 * P / 8)
    assert _bytes(z2.gradients_gib) == pytest.approx(2 * P / 8) and _bytes(z2.parameters_gib) == pytest.approx(2 * P)
    assert _bytes(z3.parameters_gib) == pytest.approx(2 * P / 8 + 2 * 2 * LAYER)  # + two gathered layers
    off = _mem(base + ["hardware.zero_stage=2", "hardware.zero_offload_optimizer=true"])
    assert off.optimizer_gib == 0 and any("optimizer states in CPU memory" in n for n in off.notes)


def test_qlora_base_in_four_bits():
    cfg = ["model=qwen15_7b", "hardware=1xV100", "peft=qlora", "batch.effective=8", "batch.micro=1"]
    m = make_plan(compose_cfg(cfg)).memory
    h, kv, i, layers, vocab = 4096, 4096, 11008, 32, 151936
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    lora = layers * 64 * (2 * h + (h + kv) * 2 + 2 * h + 3 * (h + i))
    assert m.trainable_params == lora
    # 4-bit linears + block constants (0.0159 byte with double quantization), the rest (embeddings, head, norms)
    # at 2 bytes of the card's 7.7e9, and fp32 adapters
    assert _bytes(m.parameters_gib) == pytest.approx(linear * 0.5159 + (7.7e9 - linear) * 2 + lora * 4)
    assert _bytes(m.logits_gib) == pytest.approx(m.tokens_per_micro * vocab * 12)  # the card's vocabulary


def test_pretrained_card_without_architecture_says_what_is_missing():
    m = make_plan(compose_cfg(["model=gpt2_120m"])).memory
    assert m.activations_gib is None and m.logits_gib is None
    assert _bytes(m.parameters_gib) == pytest.approx(4 * 1.24e8)
    text = format_plan(make_plan(compose_cfg(["model=gpt2_120m"])))
    assert "activations unknown" in text and "model.hidden_size" in text


def test_fit_warning_and_suggested_overrides():
    small = SMALL + ["model.vocab_size=5000", "hardware.device_memory_gb=0.01"]  # logits worth chunking
    plan = make_plan(compose_cfg(small))
    m = plan.memory
    assert m.fits is False and m.total_gib > 0.01
    text = format_plan(plan)
    assert "WARNING: does not fit the device's 0.01 GiB" in text and "to fit, try" in text
    keys = [s.split(" (")[0] for s in m.suggestions]
    assert keys[0] == "batch.micro=1"  # activations dominate: the smallest total first
    # no strategy change on one CPU process
    assert set(keys) == {"batch.micro=1", "model.gradient_checkpointing=true", "model.loss_chunk_size=4096",
                         "peft=lora"}
    # with the 100-token vocabulary chunking cannot help (4096 > the 512 loss rows) nor can rank-64 adapters
    # (557k parameters next to the model's 682k): neither is suggested
    tiny_vocab = make_plan(compose_cfg(SMALL + ["hardware.device_memory_gb=0.01"])).memory.suggestions
    assert [s.split(" (")[0] for s in tiny_vocab] == ["batch.micro=1", "model.gradient_checkpointing=true"]
    for suggestion in m.suggestions:  # each total is what the plan gives with that override
        key, total = suggestion.split(" (")[0], float(suggestion.split(" (")[1].split(" GiB")[0])
        again = make_plan(compose_cfg(small + [key])).memory
        assert again.total_gib == pytest.approx(total, abs=0.05)
        assert again.total_gib < m.total_gib
        assert ("fits" in suggestion) == (again.total_gib <= 0.01)


def test_an_8b_dpo_on_one_a100_is_warned_with_the_override_that_fits():
    plan = make_plan(compose_cfg(["experiment=tulu3_8b_dpo", "hardware=1xA100", "batch.grad_accum=null"]))
    m = plan.memory
    assert m.fits is False and m.total_gib > 80
    # 8.03e9 parameters x (bf16 weights 2 + grads 2 + AdamW 4) + a bf16 reference copy 2: 64 GB before activations
    assert _bytes(m.parameters_gib + m.gradients_gib + m.optimizer_gib + m.frozen_gib) == pytest.approx(
        8.0e9 * 10)
    assert m.suggestions[0].startswith("peft=lora") and "fits" in m.suggestions[0]
    assert "hardware.strategy=fsdp" not in " ".join(m.suggestions)  # one GPU: nothing to shard over
    fits = make_plan(compose_cfg(["experiment=tulu3_8b_dpo"])).memory  # the card's 32 GPUs, FSDP2
    assert fits.fits is True and fits.total_gib < 80


def test_suggests_sharding_when_several_ranks_replicate():
    cfg = ["experiment=tulu3_8b_dpo", "hardware=8xA100", "hardware.strategy=ddp", "batch.grad_accum=null"]
    m = make_plan(compose_cfg(cfg)).memory
    assert m.fits is False and any(s.startswith("hardware.strategy=fsdp") and "fits" in s for s in m.suggestions)


def test_every_gpu_preset_states_its_device_memory():
    for preset, gib in (("1xA100", 80), ("4x8xA100", 80), ("8xA100", 80), ("8xH100", 80), ("1xV100", 32)):
        assert compose_cfg([f"hardware={preset}"]).hardware.device_memory_gb == gib


def test_char_vocabulary_matches_the_tokenizer():
    from hydralign.models import char_tokenizer
    from hydralign.plan.memory import char_vocab_size

    assert char_vocab_size() == len(char_tokenizer())


def test_estimate_is_logged_as_a_param():
    from hydralign.tracking.recorder import config_params

    cfg = compose_cfg(SMALL)
    plan = make_plan(cfg)
    assert config_params(cfg, plan)["memory_estimate_gib"] == f"{plan.memory.total_gib:.3f}"


def test_plan_module_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys; from tests.helpers import compose_cfg; from hydralign.plan import make_plan, format_plan; "
            "format_plan(make_plan(compose_cfg(['experiment=tulu3_8b_dpo']))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


HARNESS = ["eval.harness.tasks=[hydralign_arithmetic]", "eval.harness.every=checkpoint"]
# lm-eval's forward, per token, fp32 weights (r = 4): KV cache 2 x 4 layers x kv 128 x 4, one layer's working
# tensors (3h + 2I) x 4, the logits and their fp32 log-softmax vocab x (4 + 4)
EVAL_TOKEN = 2 * 4 * 128 * 4 + (3 * 128 + 2 * 256) * 4 + 100 * 8  # 4096 + 3584 + 800 = 8,480


def test_evaluation_on_one_device_holds_the_training_state_and_one_batch():
    m = _mem(["hardware=cpu"] + HARNESS)  # eval.harness.batch_size null: eval.batch_size 64, S = max_seq_len 64
    assert _bytes(m.evaluation_gib) == pytest.approx(16 * P + 64 * 64 * EVAL_TOKEN)  # 10,913,792 + 34,734,080
    assert _bytes(m.total_gib) == pytest.approx(max(16 * P + 64 * 64 * EVAL_TOKEN, 32_286_720))  # evaluation's
    small = _mem(["hardware=cpu", "eval.harness.batch_size=2"] + HARNESS)
    assert _bytes(small.evaluation_gib) == pytest.approx(16 * P + 2 * 64 * EVAL_TOKEN)
    assert _bytes(small.total_gib) == pytest.approx(32_286_720)  # the step's peak is the larger again
    assert _mem(["hardware=cpu"]).evaluation_gib is None  # eval.harness.every=none: nothing added
    assert "evaluating (rank 0)" in format_plan(make_plan(compose_cfg(SMALL + ["hardware=cpu"] + HARNESS)))


def test_evaluation_under_fsdp2_ddp_and_zero3_holds_no_whole_copy():
    """Sharded weights stay sharded while lm-eval runs (every rank runs the requests, gathering layer by layer, as
    in training's parameters piece); DDP ranks hold the whole model anyway: one batch beside the training state."""
    fsdp = ["hardware=8xA100", "batch.effective=64", "eval.harness.batch_size=1"] + HARNESS
    for extra in ([], ["hardware.strategy=deepspeed", "hardware.zero_stage=3"], ["hardware.strategy=ddp"]):
        m = _mem(fsdp + extra)
        resident = _bytes(m.parameters_gib + m.gradients_gib + m.optimizer_gib)
        assert _bytes(m.evaluation_gib) == pytest.approx(resident + 64 * EVAL_TOKEN), extra


def test_an_evaluation_that_does_not_fit_suggests_a_smaller_harness_batch():
    cfg = ["hardware=cpu", "hardware.device_memory_gb=0.04", "eval.harness.batch_size=64"] + HARNESS
    m = _mem(cfg)  # training 0.030 GiB fits; evaluating with 64 rows (0.043 GiB) does not
    assert m.fits is False and m.total_gib == pytest.approx(m.evaluation_gib)
    first = m.suggestions[0]
    assert first.startswith("eval.harness.batch_size=1") and "fits" in first
    again = _mem(cfg[:-3] + ["eval.harness.batch_size=1"] + HARNESS)
    assert again.fits is True and again.total_gib == pytest.approx(float(first.split("(")[1].split(" GiB")[0]), abs=0.05)


def test_generator_devices_are_not_learners_sharding_the_policy():
    """Tulu 3 RLVR: 7 learners + 1 vLLM generator on 8 GPUs shard the policy over 7, as 7 GPUs without generators."""
    card = make_plan(compose_cfg(["experiment=tulu3_8b_rlvr"])).memory
    seven = make_plan(compose_cfg(["experiment=tulu3_8b_rlvr", "hardware.generator_devices=0",
                                   "hardware.devices_per_node=7", "generation=hf", "method.max_staleness=0"])).memory
    assert card.parameters_gib == pytest.approx(seven.parameters_gib)
    assert card.optimizer_gib == pytest.approx(seven.optimizer_gib) and card.total_gib == pytest.approx(seven.total_gib)


# GRPO with the learner's own vLLM engine on one GPU (bf16-mixed, fp32 weights, AdamW): the model above, D = 0.2 GiB
COLOCATED = ["method=grpo", "hardware=1xA100", "generation=vllm", "model=tiny", "model.vocab_size=100",
             "model.num_heads=4", "model.num_layers=4", "data.max_seq_len=64", "method.beta=0.0",
             "hardware.device_memory_gb=0.2"]
# what stays resident while the engine samples: fp32 weights 4P + autocast's bf16 copies of all but the untied input
# embedding 2(P - EMBED) + fp32 gradients 4P + AdamW 8P
RESIDENT = 18 * P - 2 * EMBED  # 12,252,416


def _colocated(overrides):
    return make_plan(compose_cfg(COLOCATED + overrides)).memory


def test_a_sleeping_colocated_engine_adds_its_share_beside_the_training_state():
    step = _colocated(["generation=hf"])  # the same training without the engine
    m = _colocated(["generation.vllm_gpu_memory_utilization=0.5"])
    assert step.colocated_gib is None and _bytes(step.total_gib) > RESIDENT
    assert _bytes(m.parameters_gib + m.gradients_gib + m.optimizer_gib + m.frozen_gib) == pytest.approx(RESIDENT)
    assert m.colocated_gib == pytest.approx(RESIDENT / GIB + 0.5 * 0.2)  # 0.1114 GiB
    assert m.total_gib == pytest.approx(max(step.total_gib, RESIDENT / GIB + 0.1)) and m.fits is True
    assert "sampling (vLLM)" in format_plan(make_plan(compose_cfg(COLOCATED)))
    awake = _colocated(["generation.vllm_gpu_memory_utilization=0.5", "generation.vllm_sleep=false"])
    assert awake.colocated_gib == pytest.approx(step.total_gib + 0.1) == awake.total_gib  # held through the step


@pytest.mark.parametrize("sleep, fitting", [("true", 0.94), ("false", 0.65)])
def test_a_colocated_share_that_does_not_fit_names_one_that_does(sleep, fitting):
    """vllm_sleep: the largest u with RESIDENT + u x D <= D, (0.2 GiB - 0.0114) / 0.2 = 0.943; without it the step's
    peak (0.0695 GiB) stays beside the share: (0.2 - 0.0695) / 0.2 = 0.652; to 0.01 below."""
    flags = [f"generation.vllm_sleep={sleep}"]
    m = _colocated(flags + ["generation.vllm_gpu_memory_utilization=0.95"])
    assert m.fits is False
    assert m.suggestions[0].startswith(f"generation.vllm_gpu_memory_utilization={fitting:g} (")
    assert m.suggestions[0].endswith("fits)") and not any(s.startswith("peft=") for s in m.suggestions)
    assert _colocated(flags + [f"generation.vllm_gpu_memory_utilization={fitting}"]).fits is True
    assert _colocated(flags + [f"generation.vllm_gpu_memory_utilization={fitting + 0.01:.2f}"]).fits is False


def test_a_share_too_small_for_the_policy_in_the_engines_dtype_is_said():
    """auto: vLLM holds a float32 config's weights in 16 bits, 2P = 1.30 MiB; float32: 4P = 2.60 MiB. A share of
    0.01 x 0.2 GiB = 2.05 MiB holds the first, not the second."""
    assert _colocated(["generation.vllm_gpu_memory_utilization=0.01"]).fits is True
    m = _colocated(["generation.vllm_gpu_memory_utilization=0.01", "generation.vllm_dtype=float32"])
    assert m.fits is False and any("does not fit its share" in n for n in m.notes)
    assert [s.split(" (")[0] for s in m.suggestions] == ["generation.vllm_gpu_memory_utilization=0.94"]


def test_no_colocated_share_fits_where_training_alone_does_not():
    m = _colocated(["hardware.device_memory_gb=0.05"])  # the step alone: 0.0695 GiB
    assert m.fits is False and not any(s.startswith("generation.vllm") for s in m.suggestions)
    assert any(n.startswith("colocated vLLM: no generation.vllm_gpu_memory_utilization fits: the training alone")
               for n in m.notes)
