"""vLLM inside the learners (generation.backend=vllm with hardware.generator_devices=0, TRL's colocate mode): the plan
accepts it on GPU presets and refuses it, naming the fix, where it cannot run; the parts of the engine's code that run
without vLLM and a GPU (rendezvous variables, the gather order, the load/sleep/sample sequence against a stand-in
engine, the engine built from the config alone) and the weights group's backend per device."""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from hydralign.rollout_workers.channel import checksum, weights_backend
from hydralign.rollout_workers.colocated import ColocatedVLLM, full_tensors, launcher_env, needs_load
from tests.helpers import compose_cfg

COLOCATED = ["method=grpo", "hardware=1xA100", "generation=vllm"]


# --- the plan ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hardware", [["hardware=1xA100"], ["hardware=8xA100", "hardware.strategy=fsdp"],
                                      ["hardware=8xH100", "hardware.strategy=ddp"]])
def test_colocated_vllm_is_planned_on_gpu_presets_and_the_dry_run_says_who_samples(hardware):
    plan = make_plan(compose_cfg(["method=grpo", "generation=vllm", *hardware]))
    r = plan.rollout
    assert (r.backend, r.generator_devices, r.max_staleness) == ("vllm", 0, 0)
    text = format_plan(plan)
    assert (f"{plan.world_size} learner devices (world_size) + 0 generator devices: each learner samples its own "
            "prompts with its own colocated vLLM engine on its GPU") in text
    assert "HF generate" not in text


def test_the_hf_learners_dry_run_is_unchanged():
    text = format_plan(make_plan(compose_cfg(["method=grpo", "hardware=1xA100"])))
    assert "each learner samples its own prompts (HF generate, KV cache)" in text
    assert "vLLM" not in text


@pytest.mark.parametrize("overrides, pattern", [
    (["method=grpo", "generation=vllm"],
     r"builds a vLLM engine in each learner, on its CUDA GPU .*use a GPU hardware preset \(hardware=1xA100 \.\.\.\), "
     r"or generation.backend=hf"),
    (["method=grpo", "generation=vllm", "hardware=cpu_2proc"], r"builds a vLLM engine in each learner"),
    (COLOCATED + ["peft=lora"], r"vllm in the learners with peft=lora: .*merging adapters .* use peft=none, or "
                                r"generation.backend=hf"),
    (COLOCATED + ["hardware.strategy=deepspeed", "hardware.zero_stage=3"],
     r"vllm in the learners with hardware.strategy=deepspeed: .*use hardware.strategy=fsdp or ddp, or "
     r"generation.backend=hf"),
    (COLOCATED + ["method.max_staleness=1"],
     r"max_staleness=1 cannot be honoured: with hardware.generator_devices=0 .* set hardware.generator_devices=1"),
])
def test_colocated_vllm_is_refused_where_it_cannot_run_with_the_fix(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_plan(compose_cfg(overrides))


def test_a_real_run_needs_vllm_importable_where_the_learners_run():
    """Checked beside the device count (after dry_run printed the plan): the learners import vllm themselves; a
    method that does not sample (SFT) ignores generation.backend."""
    from hydralign.distributed.machine import check_generation_backend

    cfg = compose_cfg(COLOCATED)
    plan = make_plan(cfg)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"vllm package cannot be imported on this machine; each learner builds "
                                              r"its own engine with it .*pip install vllm"):
            check_generation_backend(cfg, plan)
    else:
        check_generation_backend(cfg, plan)
    sft = compose_cfg(["hardware=1xA100", "generation=vllm"])
    check_generation_backend(sft, make_plan(sft))
    hf = compose_cfg(["method=grpo", "hardware=1xA100"])
    check_generation_backend(hf, make_plan(hf))


# --- the weights group of learner 0 and the generator processes ------------------------------------------------------
def test_weights_go_over_nccl_between_gpus_and_over_gloo_through_cpu():
    assert weights_backend(torch.device("cpu")) == "gloo"
    assert weights_backend(torch.device("cuda", 3)) == "nccl"
    assert weights_backend("cuda") == "nccl"


def test_receive_buffers_reuse_the_models_own_tensors_on_the_device_only_where_they_match():
    from hydralign.rollout_workers.engines import receive_buffers

    model = torch.nn.Linear(3, 2)
    layout = [("weight", torch.float32, (2, 3)), ("bias", torch.float64, (2,))]
    bufs = receive_buffers(model, layout, torch.device("cpu"))
    assert bufs[0].data_ptr() == model.weight.data_ptr()  # the broadcast lands in the parameter itself
    assert bufs[1].data_ptr() != model.bias.data_ptr() and bufs[1].dtype == torch.float64
    with pytest.raises(RuntimeError, match="does not match the learners'"):
        receive_buffers(model, [("weight", torch.float32, (3, 2)), ("bias", torch.float32, (2,))])


# --- the colocated engine's own code, without vLLM or a GPU ----------------------------------------------------------
def test_launcher_env_keeps_a_rendezvous_and_makes_one_for_a_single_process():
    launched = launcher_env(3, 1, 8, {"MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29500"}, free_port=lambda: 1)
    assert launched == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    single = launcher_env(0, 0, 1, {}, free_port=lambda: 4242)
    assert single == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "4242"}


class Shard:
    """A DTensor's part in this: gathered whole by full_tensor (every learner together)."""

    def __init__(self, whole: torch.Tensor, log: list):
        self.whole, self.log, self.device = whole, log, whole.device

    def full_tensor(self) -> torch.Tensor:
        self.log.append(tuple(self.whole.shape))
        return self.whole


def test_full_tensors_gather_one_tensor_at_a_time_in_the_state_dict_order():
    log: list = []
    named = [("a", Shard(torch.ones(2, 2), log)), ("b", torch.zeros(3)), ("c", Shard(torch.ones(4), log))]
    it = full_tensors(named, torch.device("cpu"))
    name, t = next(it)
    assert name == "a" and log == [(2, 2)] and torch.equal(t, torch.ones(2, 2))  # nothing else gathered yet
    rest = list(it)
    assert [n for n, _ in rest] == ["b", "c"] and log == [(2, 2), (4,)]
    assert not any(t.requires_grad for _, t in rest)


def test_the_engine_takes_the_policy_only_when_it_changed():
    assert needs_load(None, 0) and needs_load(3, 4) and not needs_load(4, 4)


class FakeLLM:
    """vLLM's LLM as far as the learners use it: the calls, in order, and the names loaded."""

    ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

    def __init__(self, **kwargs):
        import os

        self.kwargs, self.calls, self.loaded = kwargs, [], []
        self.env = {k: os.environ.get(k) for k in self.ENV}  # what vLLM's external launcher reads as it starts

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(n for n, _ in weights))
        self.calls.append("load")
        return [method(SimpleNamespace(model_runner=SimpleNamespace(model=model)), *args)]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up {','.join(tags)}")

    def sleep(self, level=1):
        self.calls.append(f"sleep {level}")

    def generate(self, prompts, params, use_tqdm=True):
        """Completions of lengths 1..n per prompt, token 7, log-prob -0.5 each."""
        self.calls.append("generate")
        lp = lambda: {7: SimpleNamespace(logprob=-0.5)}  # noqa: E731
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[7] * (k + 1), logprobs=[lp() for _ in range(k + 1)])
                                         for k in range(p.n)]) for p in params]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    module.LLM = FakeLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.mark.parametrize("sleep", [True, False])
def test_colocated_sampling_wakes_loads_samples_and_sleeps_in_that_order(fake_vllm, sleep):
    llm = FakeLLM()
    engine = ColocatedVLLM(llm, sleep, torch.device("cpu"), (0, [2], 1.0, 4))
    model = torch.nn.Linear(2, 2)
    got = engine.sample(model, 5, [[3, 4, 5], [6]], 2, seed=10)
    load = ["load", "reset_prefix_cache"]
    assert llm.calls == (["wake_up weights", *load, "wake_up kv_cache", "generate", "sleep 2"] if sleep
                         else [*load, "generate"])
    assert llm.loaded == ["weight", "bias"]
    assert got["width"] == 3 and got["staleness"] == 0 and got["weight_sync_s"] >= 0 and got["generation_s"] >= 0
    assert got["out"].tolist() == [[3, 4, 5, 7, 0], [3, 4, 5, 7, 7], [0, 0, 6, 7, 0], [0, 0, 6, 7, 7]]
    assert got["prompt_mask"].tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert got["sampler_logps"].tolist() == [[-0.5, 0.0], [-0.5, -0.5]] * 2
    llm.calls.clear()
    engine.sample(model, 5, [[6]], 2, seed=11)  # the same policy: asleep it lost the weights, awake it has them
    assert ("load" in llm.calls) == sleep


def _tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def test_colocated_engine_is_built_from_the_config_alone_in_the_learners_world(fake_vllm, monkeypatch, tmp_path):
    from pathlib import Path

    from omegaconf import OmegaConf

    launched = {"RANK": "2", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "2222"}
    for key, value in launched.items():
        monkeypatch.setenv(key, value)  # a rank hydralign's launcher started (restored after the test)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gcfg = OmegaConf.create({"vllm_dtype": "auto", "vllm_gpu_memory_utilization": 0.3, "vllm_sleep": True})
    engine = ColocatedVLLM.start(SimpleNamespace(config=_tiny_config()), gcfg, 2, 1, 4, 7, 40, torch.device("cpu"),
                                 (0, [2], 1.0, 4))
    assert engine.llm.env == launched
    kw = engine.llm.kwargs
    assert (kw["load_format"], kw["distributed_executor_backend"], kw["enable_sleep_mode"], kw["seed"],
            kw["max_model_len"], kw["gpu_memory_utilization"], kw["skip_tokenizer_init"]) == (
        "dummy", "external_launcher", True, 7, 40, 0.3, True)
    files = sorted(p.name for p in Path(kw["model"]).iterdir())
    assert files == ["config.json"]  # the architecture only: the weights come from the learner
    assert engine.llm.calls == ["sleep 2"]  # asleep until the first rollout batch


def test_a_single_process_gets_a_rendezvous_for_vllm_and_is_left_as_it_was(fake_vllm, monkeypatch, tmp_path):
    """One learner on one GPU (no launcher): vLLM makes its world of 1 from the variables set while it starts; they are
    gone afterwards (LOCAL_RANK would make hydralign's launcher take the process for a rank torchrun started)."""
    import os

    from omegaconf import OmegaConf

    for key in FakeLLM.ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    gcfg = OmegaConf.create({"vllm_dtype": "auto", "vllm_gpu_memory_utilization": 0.5, "vllm_sleep": False})
    engine = ColocatedVLLM.start(SimpleNamespace(config=_tiny_config()), gcfg, 0, 0, 1, 0, 40, torch.device("cpu"),
                                 (0, [2], 1.0, 4))
    seen = engine.llm.env
    assert (seen["RANK"], seen["LOCAL_RANK"], seen["WORLD_SIZE"], seen["MASTER_ADDR"]) == ("0", "0", "1", "127.0.0.1")
    assert int(seen["MASTER_PORT"]) > 0
    assert not any(k in os.environ for k in FakeLLM.ENV)
    assert engine.llm.kwargs["enable_sleep_mode"] is False and engine.llm.calls == []


def test_the_generator_vllm_engine_loads_its_buffers_in_the_learners_order(fake_vllm, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from hydralign.rollout_workers.engines import VLLMEngine

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    layout = [("b", torch.float32, (2,)), ("a", torch.bfloat16, (3, 1))]
    gcfg = OmegaConf.create({"vllm_dtype": "auto", "vllm_gpu_memory_utilization": 0.5})
    engine = VLLMEngine(_tiny_config(), gcfg, 0, [2], 1.0, 4, 8, 0, layout, torch.device("cpu"))
    assert [(b.dtype, tuple(b.shape)) for b in engine.buffers()] == [(d, s) for _, d, s in layout]
    assert "distributed_executor_backend" not in engine.llm.kwargs and engine.llm.kwargs["max_model_len"] == 12
    engine.load()
    assert engine.llm.loaded == ["b", "a"] and engine.llm.calls == ["load", "reset_prefix_cache"]


def test_the_checksum_of_a_cpu_copy_is_the_same_digest_tensor_by_tensor():
    """send_weights digests each tensor as it is broadcast; the generators digest their buffers at once."""
    import hashlib

    from hydralign.rollout_workers.channel import _digest

    tensors = [torch.arange(6, dtype=torch.float32).view(2, 3).t(), torch.ones(2, dtype=torch.bfloat16)]
    h = hashlib.sha256()
    for t in tensors:
        _digest(h, t)
    assert h.hexdigest() == checksum(tensors) != checksum(tensors[::-1])
