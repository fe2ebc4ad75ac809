"""PEFT on the tiny Llama built from config (CPU): which layers LoRA wraps and what trains, the
adapter-disabled base (DPO's reference), adapter save/reload, the merged export, and the checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from hydralign.errors import ConfigError
from hydralign.models import build_model, char_tokenizer
from hydralign.models.peft import (
    adapters_disabled,
    apply_peft,
    is_peft,
    merged_copy,
    quantization_kwargs,
    save_adapters,
    trainable_summary,
)
from hydralign.models.peft_checks import check_peft
from tests.helpers import compose_cfg

R = 4


@pytest.fixture(scope="module")
def cfg():
    return compose_cfg(["peft=lora", f"peft.r={R}", "peft.alpha=8", "peft.dropout=0.1"])


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def ids(tok):
    return torch.tensor([tok.encode("007+042=240") + tok.encode("12+3=51")[:11]])


def base_model(cfg, tok):
    return build_model(cfg.model, tok, seed=0).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def lora_model(cfg, tok, perturb=True):
    model = apply_peft(base_model(cfg, tok), cfg.peft).eval()
    if perturb:  # lora_B starts at zero (adapters are a no-op); make them change the output
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def test_lora_all_linear_wraps_decoder_linears_and_trains_only_adapters(cfg, tok):
    base = base_model(cfg, tok)
    linears = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "lm_head" in linears
    assert apply_peft(base, compose_cfg().peft) is base  # peft=none: the model itself

    model = apply_peft(base, cfg.peft)
    assert is_peft(model) and not is_peft(base.model)
    wrapped = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == linears - {"lm_head"}
    assert all(".layers." in n for n in wrapped)

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # By hand: per decoder layer q, k, v, o are h -> h (kv heads = heads), gate and up h -> i, down i -> h;
    # LoRA adds A (r x in) and B (out x r), i.e. r * (in + out) per wrapped Linear.
    h, i, layers = cfg.model.hidden_size, cfg.model.intermediate_size, cfg.model.num_layers
    expected = layers * R * (4 * (h + h) + 3 * (h + i))
    assert sum(p.numel() for p in trainable.values()) == expected
    total = sum(p.numel() for p in model.parameters())
    summary = trainable_summary(model)
    assert summary.startswith(f"trainable {expected / 1e3:.1f}K / ") and summary.endswith(
        f"({100 * expected / total:.2g}%)")


def test_adapters_disabled_gives_the_base_logits(cfg, tok, ids):
    base_logits = logits(base_model(cfg, tok), ids)  # same seed: the weights the adapters sit on
    model = lora_model(cfg, tok)
    with_adapters = logits(model, ids)
    assert not torch.allclose(with_adapters, base_logits, atol=1e-3)
    with adapters_disabled(model) as ref:
        assert ref is model
        assert torch.equal(logits(model, ids), base_logits)
    assert torch.equal(logits(model, ids), with_adapters)  # adapters back on exit, still trainable
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)

    plain = base_model(cfg, tok)
    with adapters_disabled(plain):  # no-op for a model without adapters
        assert torch.equal(logits(plain, ids), base_logits)


def test_gradient_checkpointing_still_reaches_the_adapters(tok, ids):
    cfg = compose_cfg(["peft=lora", "peft.r=2", "model.gradient_checkpointing=true"])
    model = apply_peft(build_model(cfg.model, tok, seed=0), cfg.peft).train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for n, g in grads.items() if "lora_A" in n or "lora_B" in n)
    assert all(g is None for n, g in grads.items() if "lora_" not in n)


def test_qlora_path_prepares_the_base(tok, ids, tmp_path):
    """No bitsandbytes here: a 16-bit tiny base flagged as loaded in 4 bits runs the real
    prepare_model_for_kbit_training + get_peft_model path (freeze, fp32 casts, checkpointing kept)."""
    cfg = compose_cfg(["peft=qlora", "peft.r=2", "model.dtype=bfloat16", "model.gradient_checkpointing=true"])
    base = build_model(cfg.model, tok, seed=0)
    base.is_loaded_in_4bit = True  # what transformers' bitsandbytes loader sets
    model = apply_peft(base, cfg.peft).train()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if "lora_A" in n or "lora_B" in n}
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="merge_saved_adapters"):
        merged_copy(model)


def test_save_adapters_reloads_onto_a_fresh_base(cfg, tok, ids, tmp_path):
    model = lora_model(cfg, tok)
    out = save_adapters(model, tmp_path / "adapter", tokenizer=tok)
    assert out == tmp_path / "adapter" and not (tmp_path / "adapter.tmp").exists()
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # adapters only, not the base
    reloaded = PeftModel.from_pretrained(base_model(cfg, tok), out).eval()
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs a PEFT model"):
        save_adapters(base_model(cfg, tok), tmp_path / "plain")


def test_merged_copy_matches_and_loads_without_peft(cfg, tok, ids, tmp_path):
    model = lora_model(cfg, tok)
    expected = logits(model, ids)
    merged = merged_copy(model)
    assert not is_peft(merged) and type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n or "base_layer" in n for n in merged.state_dict())
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=0)
    # the training model keeps its adapters, untouched by the merge
    assert is_peft(model) and any(isinstance(m, LoraLayer) for m in model.modules())
    assert torch.equal(logits(model, ids), expected)

    merged.save_pretrained(tmp_path / "hf_model", safe_serialization=True)
    assert not (tmp_path / "hf_model" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model").eval()
    torch.testing.assert_close(logits(loaded, ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides, message", [
    (["peft=qlora"], "peft=qlora quantizes the base to 4 bits with bitsandbytes, which needs CUDA; use "
                     "peft=lora on this hardware or a GPU preset such as hardware=1xV100"),
    (["peft=qlora", "hardware=1xV100", "model=llama31_8b", "peft.compute_dtype=bfloat16"],
     "hardware.gpu=V100-32GB has no bf16; set peft.compute_dtype=float16"),
    (["peft=qlora", "hardware=1xV100"], "model.source=config"),
    (["peft=qlora", "hardware=1xV100", "model=llama31_8b", "peft.load_in_4bit=false"], "use peft=lora"),
    (["peft=lora", "peft.load_in_4bit=true"], "needs peft=qlora"),
    (["peft=lora", "peft.r=0"], "peft.r=0 must be an integer >= 1"),
    (["peft=lora", "peft.dropout=1.0"], "peft.dropout=1.0 must be in [0, 1)"),
    (["peft=lora", "peft.bias=some"], "peft.bias=some is unknown"),
    (["peft=lora", "peft.target_modules=attention"], "must be all-linear or a list"),
    (["peft=qlora", "hardware=1xV100", "model=llama31_8b", "peft.compute_dtype=half"], "compute_dtype=half"),
    (["peft=qlora", "hardware=8xA100", "model=llama31_8b", "hardware.strategy=fsdp"], "strategy=fsdp"),
])
def test_check_peft_refuses_with_the_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_peft(compose_cfg(overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("overrides", [
    [], ["peft=lora"], ["peft=lora", "peft.target_modules=[q_proj,v_proj]"],
    ["peft=qlora", "hardware=1xV100", "model=llama31_8b"],
    ["peft=qlora", "hardware=1xA100", "model=llama31_8b", "peft.compute_dtype=bfloat16"],
])
def test_check_peft_accepts(overrides):
    check_peft(compose_cfg(overrides))


def test_check_peft_takes_plain_dicts_and_imports_no_torch():
    check_peft({"peft": {"name": "lora", "r": 8}, "hardware": {"accelerator": "cpu"}})
    check_peft({})  # no peft node: peft=none
    with pytest.raises(ConfigError, match="peft=dora is unknown"):
        check_peft({"peft": {"name": "dora"}})
    code = "import sys, hydralign.models.peft_checks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quantization_needs_bitsandbytes_and_a_pretrained_base(tok, monkeypatch):
    assert quantization_kwargs(compose_cfg(["peft=lora"]).peft) == {}
    assert quantization_kwargs(None) == {}
    cfg = compose_cfg(["peft=qlora"])
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'hydralign\[qlora\]'"):
        quantization_kwargs(cfg.peft)
    with pytest.raises(ConfigError, match="model.source=config"):
        build_model(cfg.model, tok, seed=0, pcfg=cfg.peft)
    with pytest.raises(ConfigError, match="needs the base loaded in 4 bits"):
        apply_peft(build_model(cfg.model, tok, seed=0), cfg.peft)
