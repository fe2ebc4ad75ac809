"""GPU readiness in one go (``benchmarks/gpu_check.sh`` runs it): each check prints one table row, and a check that
cannot run says why (a package the machine lacks is SKIPPED with its name, an error is FAILED with its message), so
one run on a borrowed GPU gives every answer it can.

    fsdp_sft_1b      FSDP2 (ModelParallelStrategy, fully_shard) bf16 SFT of a ~1.1B Llama built from config, packed
                     rows of 2,048 tokens: tokens/s and MFU (6N + attention FLOPs per token / the GPU's bf16 peak)
    packed_varlen    packed rows (position ids restarting per example, no mask) on flash-attention's varlen kernel vs
                     the same examples padded: per-example token NLL sums equal (bf16: 2e-2 relative)
    qlora_dpo        DPO on a 4-bit base with LoRA (bitsandbytes) for 20 steps: finite losses, reward accuracy
    chunked_loss     SFT's chunked loss (Liger's fused kernel where installed) vs the full-logits loss: value and
                     gradient equal (bf16 weights: 1e-2 relative)
    deepspeed_zero   DeepSpeed ZeRO-2 and ZeRO-3 on one GPU for 12 steps: the loss curve of plain bf16 DDP (5e-2)
    grpo_vllm        GRPO's vLLM generator engine: weights loaded through collective_rpc, 4 prompts x 8 sampled, its
                     log-probs vs the same weights' HF forward; with >= 2 GPUs the 1 learner + 1 vLLM generator job
                     (weights over NCCL, every broadcast's checksum verified)
    grpo_vllm_colocated  GRPO with vLLM inside the learner (generation=vllm, hardware.generator_devices=0, sleep mode):
                     the real 6-step job on one GPU, its last time/weight_sync_s, time/generation_s, is/ratio_mean

    python -m benchmarks.gpu_check --device cuda --out gpu_check.md   # what gpu_check.sh runs
    python -m benchmarks.gpu_check --device cpu --out /tmp/smoke.md   # the script's own smoke test, tiny, on CPU

``--device cpu`` runs every check with tiny sizes and fp32 where it can (no flash, no bitsandbytes: those are
SKIPPED there), to find a broken check before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense, per GPU


class Skipped(Exception):
    """The check cannot run on this machine (the message says what is missing)."""


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skipped(f"not installed: {', '.join(missing)}")


def hardware(device: str, precision: str = "bf16-mixed") -> list[str]:
    if device == "cuda":
        return ["hardware=1xA100", f"hardware.precision={precision}", "hardware.gpu=null"]
    return ["hardware=cpu"]


def quiet(steps: int) -> list[str]:
    return [f"trainer.max_steps={steps}", "eval.at_start=false", f"eval.every_n_steps={steps}", "eval.num_generate=0",
            "checkpoint.monitor=val/loss", "checkpoint.mode=min", "checkpoint.save_last=false",
            "checkpoint.export_hf=false", "checkpoint.every_n_steps=null", "logger=none", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "schedule.warmup_steps=1", "schedule.warmup_ratio=null",
            "optimized_metric=val/loss"]


# --- the checks -----------------------------------------------------------------------------------
def fsdp_sft_1b(device: str, tmp: Path) -> str:
    import torch
    from lightning.pytorch.callbacks import Callback

    from benchmarks.packing_throughput import TokenTimer, write_data
    from hydralign.run.job import run
    from tests.helpers import tiny_cfg

    big = device == "cuda"
    dims = dict(hidden=2048, layers=16, heads=16, inter=5632, seq=2048) if big else \
        dict(hidden=64, layers=2, heads=4, inter=128, seq=256)
    files = write_data(tmp / "sft_data", n=4000 if big else 200)

    class Size(Callback):
        params = 0

        def on_train_start(self, trainer, module):
            Size.params = sum(p.numel() for p in module.model.parameters())

    steps, timer = (30 if big else 6), TokenTimer()
    overrides = hardware(device) + quiet(steps) + [
        "hardware.strategy=fsdp", "model=llama25m", f"model.tokenizer={files['tokenizer']}",
        f"model.hidden_size={dims['hidden']}", f"model.num_layers={dims['layers']}", f"model.num_heads={dims['heads']}",
        f"model.intermediate_size={dims['inter']}", f"model.max_position_embeddings={dims['seq']}",
        "model.attn_implementation=sdpa", "data=jsonl", f"data.train_files=[{files['train']}]",
        "data.val_fraction=0.01", f"data.max_seq_len={dims['seq']}", "data.packing=packed",
        f"data.max_tokens_per_micro={dims['seq']}", "batch.micro=8", "batch.effective=16"]
    run(tiny_cfg(tmp / "fsdp", overrides), callbacks=[timer, Size()])
    kept = timer.steps[5 if big else 2:]
    tokens_per_s = sum(t for _, t in kept) / sum(s for s, _ in kept)
    flops_per_token = 6 * Size.params + 12 * dims["layers"] * dims["hidden"] * dims["seq"]
    peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None) if big else None
    mfu = f", MFU {flops_per_token * tokens_per_s / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else ""
    return (f"{Size.params / 1e9:.2f}B parameters, {dims['seq']}-token packed rows: {tokens_per_s:,.0f} tokens/s "
            f"(median step {statistics.median(s for s, _ in kept):.2f} s){mfu}")


def packed_varlen(device: str, tmp: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hydralign.models.inputs import model_inputs

    if device == "cuda":
        need("flash_attn")
    attn = "flash_attention_2" if device == "cuda" else "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, max_position_embeddings=1024)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn).to(device=device, dtype=dtype).eval()
    lengths = [37, 300, 5, 129, 511, 64]
    seqs = [torch.randint(1, 1000, (n,)) for n in lengths]
    with torch.no_grad():
        width = max(lengths)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        logits = model(**model_inputs(batch)).logits.float()
        padded = [_nll(logits[i, :n], seqs[i].to(device)) for i, n in enumerate(lengths)]
        row = torch.cat(seqs).unsqueeze(0).to(device)
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(device)
        logits = model(**model_inputs({"input_ids": row, "position_ids": positions})).logits.float()[0]
        packed, start = [], 0
        for s in seqs:
            packed.append(_nll(logits[start:start + len(s)], s.to(device)))
            start += len(s)
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(padded, packed))
    tolerance = 2e-2 if device == "cuda" else 1e-5
    verdict = "equal" if worst <= tolerance else "DIFFER"
    return f"{attn}: {len(seqs)} examples in one packed row vs padded, worst relative NLL difference {worst:.2e} " \
           f"({verdict}, tolerance {tolerance:g})"


def _nll(logits, tokens) -> float:
    import torch.nn.functional as F

    return float(F.cross_entropy(logits[:-1], tokens[1:], reduction="sum"))


def qlora_dpo(device: str, tmp: Path) -> str:
    if device != "cuda":
        raise Skipped("bitsandbytes' 4-bit base needs CUDA")
    need("bitsandbytes", "peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks import dpo_data
    from hydralign.run.job import run
    from tests.helpers import tiny_cfg

    paths = dpo_data.build(tmp / "dpo_data", num_train=256, num_val=16)
    base = tmp / "base"
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                                 num_attention_heads=8, max_position_embeddings=256)).save_pretrained(base)
    losses: list[float] = []
    from lightning.pytorch.callbacks import Callback

    class Losses(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            losses.append(float(module.last_window_loss))

    overrides = hardware(device) + quiet(20) + [
        "method=dpo", "peft=qlora", "model=llama25m", "model.source=pretrained", f"model.name_or_path={base}",
        f"model.tokenizer={paths['tokenizer']}", "data=jsonl", "data.max_seq_len=256",
        f"data.train_files=[{paths['train']}]", f"data.val_files=[{paths['val']}]", "batch.effective=8",
        "batch.micro=4", "eval.batch_size=4"]
    metrics = run(tiny_cfg(tmp / "qlora", overrides), callbacks=[Losses()])
    finite = all(math.isfinite(x) for x in losses)
    return (f"20 steps, {'finite' if finite else 'NON-FINITE'} losses {losses[0]:.4f} -> {losses[-1]:.4f}, "
            f"val/rewards/accuracies {metrics.get('val/rewards/accuracies', float('nan')):.3f}")


def chunked_loss(device: str, tmp: Path) -> str:
    import torch

    from hydralign.losses.chunked_ce import chunked_token_nll_sum, fused_kernel_available
    from hydralign.losses.token_ce import token_nll_sum

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hidden, vocab, rows, width = (2048, 128256, 2, 2048) if device == "cuda" else (64, 1000, 2, 128)
    h = torch.randn(rows, width, hidden, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(vocab, hidden, device=device, dtype=dtype) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (rows, width), device=device)
    labels[:, : width // 4] = -100  # prompt positions: no target
    full, _ = token_nll_sum(h @ weight.T, labels)
    gh, gw = torch.autograd.grad(full, (h, weight))
    total, _ = chunked_token_nll_sum(h, weight, labels, chunk=1024)
    ch, cw = torch.autograd.grad(total, (h, weight))
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())  # noqa: E731
    worst = max(abs(float(total) - float(full)) / abs(float(full)), rel(ch, gh), rel(cw, gw))
    kernel = "Liger's fused kernel" if fused_kernel_available(torch.device(device)) else "hydralign's chunks"
    tolerance = 1e-2 if device == "cuda" else 1e-5
    return f"{kernel}: worst relative difference (loss, dh, dW) {worst:.2e} " \
           f"({'equal' if worst <= tolerance else 'DIFFER'}, tolerance {tolerance:g})"


def deepspeed_zero(device: str, tmp: Path) -> str:
    need("deepspeed")
    from hydralign.run.job import run
    from tests.helpers import tiny_cfg
    from tests.multiprocess.curve_job import Curve

    steps = 12
    common = hardware(device) + quiet(steps) + ["batch.effective=16", "batch.micro=4",
                                                "data.arithmetic.num_train=512", "data.arithmetic.num_val=16"]
    curves = {}
    for name, extra in (("ddp", []), ("zero2", ["hardware.strategy=deepspeed", "hardware.zero_stage=2"]),
                        ("zero3", ["hardware.strategy=deepspeed", "hardware.zero_stage=3"])):
        curve = Curve()
        run(tiny_cfg(tmp / name, common + extra), callbacks=[curve])
        curves[name] = curve.train
    ref = curves["ddp"]
    worst = {n: max(abs(c[s] - ref[s]) for s in ref) for n, c in curves.items() if n != "ddp"}
    tolerance = 5e-2 if device == "cuda" else 1e-5
    return "; ".join(f"{n}: {len(curves[n])} steps, worst |loss - plain| {w:.2e} "
                     f"({'same curve' if w <= tolerance else 'DIFFERS'})" for n, w in worst.items())


def grpo_vllm(device: str, tmp: Path) -> str:
    """GRPO's vLLM generator engine (hydralign/rollout_workers/engines.py) on this GPU: built from the tiny policy's
    config (random weights), given the policy's weights through collective_rpc (one CUDA tensor at a time, as the
    learners' broadcast hands them over), it samples 4 prompts x 8; its log-probs of the sampled tokens are compared
    with the same weights' HF forward (the importance ratio the correction would see: ~1 up to bf16 numerics). With >= 2 GPUs also the real
    job: 1 learner + 1 vLLM generator, max_staleness 1, 6 steps, weights over NCCL with HYDRALIGN_VERIFY_SYNC=1."""
    need("vllm")
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        raise Skipped("vLLM needs a CUDA GPU")
    from hydralign.generation import completion_logps, finish_rollout
    from hydralign.models import build_model, tokenizer_and_template
    from hydralign.rollout_workers.engines import VLLMEngine
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["method=grpo", "generation=vllm", "generation.vllm_gpu_memory_utilization=0.3"])
    tokenizer, template = tokenizer_and_template(cfg.model)
    stops = tokenizer.convert_tokens_to_ids(template.stop_tokens(tokenizer.eos_token))
    policy = build_model(cfg.model, tokenizer, 1, cfg.peft)  # the "learner" (the engine starts with dummy weights)
    layout = [(n, t.dtype, tuple(t.shape)) for n, t in policy.state_dict().items()]
    engine = VLLMEngine(policy.config, cfg.generation, tokenizer.pad_token_id, stops, 1.0, 8, 32, 0, layout)
    started = time.perf_counter()
    engine.load((n, t.to("cuda")) for n, t in policy.state_dict().items())  # as the broadcast hands them over
    loaded_s = time.perf_counter() - started
    prompts = [tokenizer.encode(f"{a}+{b}=") for a, b in ((12, 34), (5, 77), (40, 40), (9, 1))]
    got = engine.sample(prompts, 8, seed=1234)
    done = finish_rollout(got["out"], got["prompt_mask"], got["width"], stops, tokenizer.pad_token_id)
    policy = policy.to("cuda").eval()
    with torch.no_grad():
        hf = completion_logps(policy, done["ids"].cuda(), done["attention"].cuda(), done["positions"].cuda(),
                              got["width"], 1.0).cpu()
    mask = done["completion_mask"]
    diff = ((hf - got["sampler_logps"]).abs() * mask).sum() / mask.sum()
    ratio = (torch.exp(hf - got["sampler_logps"]) * mask).sum() / mask.sum()
    line = (f"engine: weights loaded in {loaded_s:.2f} s, {int(mask.sum())} sampled tokens, mean |logp vLLM - HF| "
            f"{diff:.3e}, mean ratio {ratio:.4f} ({'close' if abs(float(ratio) - 1) < 0.05 else 'FAR'})")
    if torch.cuda.device_count() >= 2:
        import os
        import subprocess
        import sys

        from hydralign.run.job import run  # noqa: F401 (the job itself runs through the CLI's launcher)

        job = subprocess.run([sys.executable, "-m", "hydralign", "method=grpo", "hardware=1xA100",
                              "hardware.devices_per_node=2", "hardware.generator_devices=1", "hardware.gpu=null",
                              "generation=vllm", "method.max_staleness=1", *quiet(6), f"hydra.run.dir={tmp / 'job'}"],
                             capture_output=True, text=True, timeout=400, env={**os.environ, "HYDRALIGN_VERIFY_SYNC": "1"})
        line += (f"; job 1 learner + 1 vLLM generator (NCCL, checksums verified): "
                 f"{'ok' if job.returncode == 0 else job.stderr[-300:]}")
    return line


def grpo_vllm_colocated(device: str, tmp: Path) -> str:
    """GRPO with vLLM inside the learner (hydralign/rollout_workers/colocated.py; TRL's colocate mode): the real job,
    `python -m hydralign method=grpo hardware=1xA100 generation=vllm` for 6 steps on this GPU, the engine asleep while
    the learner trains; its last logged time/weight_sync_s, time/generation_s and is/ratio_mean (vLLM's numerics
    against the learner's: ~1)."""
    need("vllm")
    import json
    import subprocess
    import sys

    import torch

    if device != "cuda" or not torch.cuda.is_available():
        raise Skipped("vLLM needs a CUDA GPU")
    run_dir = tmp / "run"
    job = subprocess.run([sys.executable, "-m", "hydralign", "method=grpo", "hardware=1xA100", "hardware.gpu=null",
                          "generation=vllm", "generation.vllm_gpu_memory_utilization=0.3", *quiet(6),
                          f"run_dir={run_dir}", f"hydra.run.dir={tmp / 'job'}"],
                         capture_output=True, text=True, timeout=400)
    if job.returncode:
        raise RuntimeError(f"the colocated job failed: {job.stderr[-400:]}")
    found = run_dir / "metrics.json"
    metrics = json.loads(found.read_text()) if found.is_file() else {}
    shown = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in ("time/weight_sync_s", "time/generation_s",
                                                                "is/ratio_mean", "rewards/mean") if k in metrics)
    return f"6 steps, 1 learner sampling with its own vLLM engine (sleep mode): ok; last {shown or 'metrics: none'}"


CHECKS: dict[str, Callable[[str, Path], str]] = {
    "fsdp_sft_1b": fsdp_sft_1b, "packed_varlen": packed_varlen, "qlora_dpo": qlora_dpo,
    "chunked_loss": chunked_loss, "deepspeed_zero": deepspeed_zero, "grpo_vllm": grpo_vllm,
    "grpo_vllm_colocated": grpo_vllm_colocated}


def environment(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "none"
    found = {m: importlib.util.find_spec(m) is not None for m in ("flash_attn", "liger_kernel", "bitsandbytes",
                                                                  "deepspeed", "vllm")}
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}; "
            + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in found.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", default="gpu_check.md")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated check names")
    args = ap.parse_args()
    rows: list[tuple[str, str, str, float]] = []
    header = f"Environment: {environment(args.device)}\n\n| check | result | details | seconds |\n|---|---|---|---:|\n"
    print(header, end="", flush=True)
    for name in args.only.split(","):
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as tmp:
            try:
                status, detail = "ok", CHECKS[name](args.device, Path(tmp))
            except Skipped as why:
                status, detail = "SKIPPED", str(why)
            except Exception as err:  # every check runs, whatever another did
                where = traceback.extract_tb(err.__traceback__)[-1]
                status, detail = "FAILED", f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
        rows.append((name, status, detail.replace("|", "/").replace("\n", " ")[:600], time.time() - started))
        print(f"| {rows[-1][0]} | {rows[-1][1]} | {rows[-1][2]} | {rows[-1][3]:.0f} |", flush=True)
        _release()
    Path(args.out).write_text(header + "".join(f"| {n} | {s} | {d} | {t:.0f} |\n" for n, s, d, t in rows))


def _release() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
