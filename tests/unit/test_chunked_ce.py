"""Chunked cross-entropy (model.loss_chunk_size): the same loss and gradients as the full-logits path, for the
hidden states and the head weight, with -100 masking and chunk sizes that do not divide the loss positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hydralign.losses.chunked_ce import chunked_sequence_logps, chunked_token_nll_sum, linear_nll
from hydralign.losses.token_ce import sequence_logps, token_nll_sum

B, T, H, V = 3, 11, 16, 37


def _inputs(seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[1, 7:] = -100  # padding
    labels[2, ::3] = -100  # scattered
    return hidden, weight, b, labels


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])  # 20 loss positions: 3 and 7 leave a short last chunk
@pytest.mark.parametrize("bias", [False, True])
def test_token_sum_loss_and_gradients_match_full_logits(chunk, bias):
    hidden, weight, b, labels = _inputs(bias=bias)
    full, n_full = token_nll_sum(F.linear(hidden, weight, b), labels)
    chunked, n_chunked = chunked_token_nll_sum(hidden, weight, labels, chunk, b)
    assert int(n_chunked) == int(n_full) == 20
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    for got, want in zip(_grads(chunked, hidden, weight, b), _grads(full, hidden, weight, b)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("chunk", [2, 5])
def test_sequence_logps_and_gradients_match_full_logits(chunk):
    hidden, weight, _, labels = _inputs(seed=1)
    logps, lengths = sequence_logps(F.linear(hidden, weight), labels)
    c_logps, c_lengths = chunked_sequence_logps(hidden, weight, labels, chunk)
    assert c_lengths.tolist() == lengths.tolist()
    torch.testing.assert_close(c_logps, logps, atol=1e-6, rtol=1e-6)
    w = torch.tensor([0.3, -1.2, 2.0])  # a non-uniform upstream gradient per sequence (DPO's)
    for got, want in zip(_grads((c_logps * w).sum(), hidden, weight), _grads((logps * w).sum(), hidden, weight)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_masked_positions_get_no_gradient_and_their_labels_do_not_matter():
    hidden, weight, _, labels = _inputs(seed=2)
    loss, _ = chunked_token_nll_sum(hidden, weight, labels, 3)
    (g_hidden,) = torch.autograd.grad(loss, [hidden])
    # position t predicts label t+1: no target after it (-100 or the end) means a zero gradient, exactly
    no_target = torch.cat([labels[:, 1:] == -100, torch.ones(B, 1, dtype=torch.bool)], dim=1)
    assert g_hidden[no_target].abs().max() == 0 and g_hidden[~no_target].abs().min() > 0
    other = labels.clone()
    other[labels == -100] = -100  # unchanged targets; a different head on masked rows changes nothing
    hidden2 = hidden.detach().clone()
    hidden2[no_target] = 1e3
    loss2, _ = chunked_token_nll_sum(hidden2, weight, other, 3)
    assert float(loss2) == pytest.approx(float(loss), abs=1e-5)


def test_no_target_gives_zero_loss_with_gradients():
    hidden, weight, _, labels = _inputs()
    labels[:] = -100
    loss, n = chunked_token_nll_sum(hidden, weight, labels, 4)
    assert int(n) == 0 and float(loss) == 0.0
    g_hidden, g_weight = _grads(loss, hidden, weight)
    assert g_hidden.abs().max() == 0 and g_weight.abs().max() == 0


def test_linear_nll_without_grad_and_rejects_zero_chunk():
    hidden, weight, _, labels = _inputs()
    x, y = hidden.detach().reshape(-1, H), labels.reshape(-1).clamp(min=0)
    with torch.no_grad():
        got = linear_nll(x, weight, y, 5)
    want = F.cross_entropy(x @ weight.detach().t(), y, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        linear_nll(x, weight, y, 0)


def test_peak_memory_is_one_chunk_of_logits():
    """The forward never holds more than a chunk of logits: a [N, V] tensor would show in the profile."""
    from torch.profiler import ProfilerActivity, profile

    n, h, v, chunk = 512, 8, 4096, 64
    x = torch.randn(n, h, requires_grad=True)
    w = torch.randn(v, h, requires_grad=True)
    y = torch.randint(0, v, (n,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        linear_nll(x, w, y, chunk).sum().backward()
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest < n * v * 4 / 4, biggest  # full logits: 8 MiB; one chunk: 1 MiB


def test_sft_with_chunked_loss_gives_the_same_loss_curve(tmp_path):
    """Training through train.run: the loss curve and the first step's gradients with model.loss_chunk_size
    equal those without (the decoder's hidden states, then the chunked head, through the SFT module)."""
    from lightning.pytorch.callbacks import Callback

    from hydralign.run.job import run
    from tests.helpers import tiny_cfg

    class Recorder(Callback):
        def __init__(self):
            self.losses, self.grads = [], {}

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.losses.append(float(module.last_window_loss))
            if not self.grads:
                self.grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}

    recs = {}
    for chunk in ("null", "7"):
        cfg = tiny_cfg(tmp_path / chunk, [
            "batch.effective=8", "batch.micro=4", "trainer.max_steps=4", "logger=none", "eval.at_start=false",
            "eval.every_n_steps=1000", "eval.num_generate=0", "checkpoint.export_hf=false",
            "checkpoint.save_last=false", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
            "optimized_metric=val/loss", "schedule=constant", "lr=3e-3", "data.arithmetic.num_train=64",
            f"model.loss_chunk_size={chunk}"])
        recs[chunk] = Recorder()
        run(cfg, callbacks=[recs[chunk]])
    ref, got = recs["null"], recs["7"]
    assert len(ref.losses) == 4 and ref.losses[-1] < ref.losses[0]
    assert max(abs(a - b) for a, b in zip(got.losses, ref.losses)) < 1e-5, (got.losses, ref.losses)
    for name, grad in ref.grads.items():
        torch.testing.assert_close(got.grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides, message", [
    (["model.loss_chunk_size=0"], "model.loss_chunk_size=0 must be >= 1"),
    (["hardware=8xA100", "hardware.strategy=deepspeed", "hardware.zero_stage=3"],
     "DeepSpeed ZeRO-3 gathers only when the module itself runs: set model.loss_chunk_size=null"),
    (["method=distill", "method.teacher_from=/tmp/teacher"], "applies to method=sft, method=dpo and method=orpo"),
])
def test_plan_refuses_what_the_chunked_head_cannot_run(overrides, message):
    from hydralign.errors import ConfigError
    from hydralign.plan.core import make_plan
    from tests.helpers import compose_cfg

    with pytest.raises(ConfigError, match=message):
        make_plan(compose_cfg(["model.loss_chunk_size=4096"] + overrides))
    make_plan(compose_cfg(["model.loss_chunk_size=4096", "hardware=8xA100", "hardware.strategy=deepspeed",
                           "hardware.zero_stage=2"]))  # ZeRO-2 keeps whole weights on every GPU: allowed
    make_plan(compose_cfg(["model.loss_chunk_size=4096", "hardware=8xA100"]))  # FSDP2: the root's forward gathers


@pytest.mark.parametrize("peft", [False, True])
def test_dpo_pair_logps_chunked_through_the_model_and_a_peft_wrapper(peft):
    """decoder_hidden finds the decoder and the head (also inside PEFT); DPO's log-probs and their gradients
    equal the full-logits path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hydralign.methods.dpo import pair_logps

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=T))
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(0, V, (B + 1, T))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    params = [p for p in model.parameters() if p.requires_grad]
    w = torch.tensor([1.0, -0.5, 2.0, 0.7])
    full, n_full = pair_logps(model, batch)
    grads_full = torch.autograd.grad((full * w).sum(), params)
    chunked, n_chunked = pair_logps(model, batch, chunk=5)
    grads_chunked = torch.autograd.grad((chunked * w).sum(), params)
    assert n_chunked.tolist() == n_full.tolist()
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-6)
    for got, want in zip(grads_chunked, grads_full):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
