"""vLLM inside the learners (generation.backend=vllm with hardware.generator_devices=0, TRL's colocate mode): the plan
accepts it on GPU presets and refuses it, naming the fix, where it cannot run; the parts of the engines' code that run
without vLLM and a GPU, against a stand-in vLLM module (its SamplingParams takes only vLLM 0.34's fields, its LLM stops,
seeds and re-seeds as vLLM does): rendezvous variables, the gather order, the load/sleep/sample sequence, the engine
built from the config alone, the generators' weights streamed into their engines with their checksums, and GRPO's
wiring of the learner's engine."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import random
import struct
import sys
import types
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy
import pytest
import torch

from hydralign.errors import ConfigError
from hydralign.plan.core import make_plan
from hydralign.plan.format import format_plan
from hydralign.rollout_workers.channel import full_tensors
from hydralign.rollout_workers.colocated import ColocatedVLLM, launcher_env
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


# vLLM 0.34.0's SamplingParams fields (vllm/sampling_params.py, the public ones): the stand-in refuses any other keyword
SAMPLING_FIELDS = frozenset((
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "watermarking", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start", "logprob_token_ids", "flat_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output", "output_kind",
    "stream_interval", "skip_clone", "output_text_buffer_length", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words", "skip_reading_prefix_cache", "thinking_token_budget",
    "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids"))


class SamplingParams:
    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"SamplingParams has no {unknown}")
        defaults = {"n": 1, "temperature": 1.0, "seed": None, "stop_token_ids": None, "ignore_eos": False,
                    "max_tokens": 16, "logprobs": None}
        self.__dict__.update({**defaults, **kwargs})


class FakeLLM:
    """vLLM's LLM as far as hydralign uses it: the calls in order, the names loaded, the environment and config it
    started with, the seeds its requests' samples get (v1's ParentRequest: child j of a request seeded s gets s + j),
    whether autocast was on at each call, and vLLM's stops: a stop token id, the model config's EOS (``EOS``) unless
    ``ignore_eos``, or max_tokens. Like vLLM's worker it seeds Python's, NumPy's and torch's generators as it starts."""

    ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    EOS = 1

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded, self.seeds, self.autocast = kwargs, [], [], [], []
        self.env = {k: os.environ.get(k) for k in self.ENV}  # what vLLM's external launcher reads as it starts
        self.multiprocessing = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.config = json.loads((Path(kwargs["model"]) / "config.json").read_text()) if "model" in kwargs else None
        self.script = None  # the tokens every sample draws (None: sample j of a request draws j + 1 sevens)
        self.on_load = None  # called with (name, tensor) as the model's loader takes each
        random.seed(0), numpy.random.seed(0), torch.manual_seed(0)  # vllm.utils.torch_utils.set_random_seed

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append("load")
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        model = SimpleNamespace(load_weights=self._load_weights)
        return [method(SimpleNamespace(model_runner=SimpleNamespace(model=model)), *args, **(kwargs or {}))]

    def _load_weights(self, weights):
        for name, tensor in weights:  # one at a time, each copied into its parameter
            self.loaded.append(name)
            if self.on_load is not None:
                self.on_load(name, tensor)

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up {','.join(tags)}")

    def sleep(self, level=1):
        self.calls.append(f"sleep {level}")

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        self.calls.append("generate")
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        outputs = []
        for p in sampling_params:
            assert isinstance(p, SamplingParams)
            stops = set(p.stop_token_ids or ()) | (set() if p.ignore_eos else {self.EOS})
            samples = []
            for j in range(p.n):
                self.seeds.append(None if p.seed is None else p.seed + j)
                tokens = []
                for t in (self.script if self.script is not None else [7] * (j + 1))[:p.max_tokens]:
                    tokens.append(t)
                    if t in stops:
                        break
                samples.append(SimpleNamespace(token_ids=tokens,
                                               logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in tokens]))
            outputs.append(SimpleNamespace(outputs=samples))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams
    module.LLM = FakeLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # vllm_engine sets it: restored after
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return module


def test_the_stand_in_refuses_what_vllms_sampling_params_does_not_take(fake_vllm):
    with pytest.raises(TypeError, match="stop_ids"):
        fake_vllm.SamplingParams(n=2, stop_ids=[2])


@pytest.mark.parametrize("sleep", [True, False])
def test_colocated_sampling_wakes_loads_samples_and_sleeps_in_that_order(fake_vllm, sleep):
    llm = FakeLLM()
    engine = ColocatedVLLM(llm, sleep, torch.device("cpu"), (0, [2], 1.0, 4), asleep=sleep)  # as start leaves it
    model = torch.nn.Linear(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training step's (bf16-mixed): not for vLLM's calls
        got = engine.sample(model, 5, [[3, 4, 5], [6]], 2, seed=10)
    load = ["load", "reset_prefix_cache"]
    assert llm.calls == (["wake_up weights", *load, "wake_up kv_cache", "generate", "sleep 2"] if sleep
                         else [*load, "generate"])
    assert llm.autocast == [False, False]
    assert llm.loaded == ["weight", "bias"]
    assert got["width"] == 3 and got["staleness"] == 0 and got["weight_sync_s"] >= 0 and got["generation_s"] >= 0
    assert got["out"].tolist() == [[3, 4, 5, 7, 0], [3, 4, 5, 7, 7], [0, 0, 6, 7, 0], [0, 0, 6, 7, 7]]
    assert got["prompt_mask"].tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert got["sampler_logps"].tolist() == [[-0.5, 0.0], [-0.5, -0.5]] * 2
    llm.calls.clear()
    engine.sample(model, 5, [[6]], 2, seed=11)  # the same policy: asleep it lost the weights, awake it has them
    assert ("load" in llm.calls) == sleep
    llm.calls.clear()
    engine.rest()  # training ended: asleep either way (once)
    engine.rest()
    assert llm.calls == ([] if sleep else ["sleep 2"])
    llm.calls.clear()
    engine.sample(model, 5, [[6]], 2, seed=12)  # another epoch: woken, loaded again
    assert llm.calls[:4] == ["wake_up weights", *load, "wake_up kv_cache"]


def test_vllm_stops_at_hydraligns_stop_ids_only_as_hf_sampling_does(fake_vllm):
    """vLLM adds the model config's EOS to the stop ids unless ignore_eos; HF sampling stops at hydralign's."""
    from hydralign.rollout_workers.engines import vllm_sample

    llm = FakeLLM()
    llm.script = [5, FakeLLM.EOS, 6, 2, 9]
    got = vllm_sample(llm, [[3]], 1, 0, pad_id=0, stop_ids=[2], temperature=1.0, max_new_tokens=8)
    assert got["out"].tolist() == [[3, 5, FakeLLM.EOS, 6, 2]]


def test_every_sample_of_a_batch_has_its_own_seed(fake_vllm):
    from hydralign.rollout_workers.engines import vllm_sample

    llm = FakeLLM()
    vllm_sample(llm, [[3], [4], [5]], 4, 100, pad_id=0, stop_ids=[2], temperature=1.0, max_new_tokens=2)
    assert llm.seeds == list(range(100, 112))  # request i: 100 + 4i, its children + j


def _tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


GCFG = {"vllm_dtype": "auto", "vllm_gpu_memory_utilization": 0.3, "vllm_sleep": True}


def test_the_engines_config_names_the_causal_lm_class_and_vllm_runs_in_this_process(fake_vllm, monkeypatch):
    """A policy built from its config has no architectures: vLLM would build the bare LlamaModel (a pooling model
    that cannot generate). The engine's copy names the causal LM (never the policy's class: FSDP2's is
    FSDPLlamaForCausalLM); a user's VLLM_ENABLE_V1_MULTIPROCESSING=1 would pickle the weights to another process."""
    from omegaconf import OmegaConf

    from hydralign.models import build_model, tokenizer_and_template
    from hydralign.rollout_workers.engines import causal_lm_config, vllm_engine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    cfg = compose_cfg(["method=grpo"])
    tokenizer, _ = tokenizer_and_template(cfg.model)
    policy = build_model(cfg.model, tokenizer, cfg.seed, cfg.peft)
    assert policy.config.architectures is None
    llm = vllm_engine(policy.config, OmegaConf.create(GCFG), 0, 40)
    assert llm.config["architectures"] == ["LlamaForCausalLM"] and llm.config["model_type"] == "llama"
    assert policy.config.architectures is None  # the policy's own config untouched
    assert llm.multiprocessing == "0"
    named = _tiny_config()
    named.architectures = ["MistralForCausalLM"]
    assert causal_lm_config(named).architectures == ["MistralForCausalLM"]  # a card's own is kept


def test_colocated_engine_is_built_from_the_config_alone_in_the_learners_world(fake_vllm, monkeypatch):
    from omegaconf import OmegaConf

    launched = {"RANK": "2", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "2222"}
    for key, value in launched.items():
        monkeypatch.setenv(key, value)  # a rank hydralign's launcher started (restored after the test)
    monkeypatch.setattr("hydralign.rollout_workers.colocated.rng_kept", lambda device: contextlib.nullcontext())
    engine = ColocatedVLLM.start(SimpleNamespace(config=_tiny_config()), OmegaConf.create(GCFG), 2, 4, 7, 40,
                                 torch.device("cuda", 1), (0, [2], 1.0, 4))  # LOCAL_RANK: the learner's GPU index
    assert engine.llm.env == launched
    kw = engine.llm.kwargs
    assert (kw["load_format"], kw["distributed_executor_backend"], kw["enable_sleep_mode"], kw["seed"],
            kw["max_model_len"], kw["gpu_memory_utilization"], kw["skip_tokenizer_init"]) == (
        "dummy", "external_launcher", True, 7, 40, 0.3, True)
    files = sorted(p.name for p in Path(kw["model"]).iterdir())
    assert files == ["config.json"]  # the architecture only: the weights come from the learner
    assert engine.llm.calls == ["sleep 2"] and engine.asleep  # asleep until the first rollout batch
    monkeypatch.setenv("LOCAL_RANK", "0")  # Lightning's local rank would say 0; the device says 3
    assert ColocatedVLLM.start(SimpleNamespace(config=_tiny_config()), OmegaConf.create(GCFG), 2, 4, 7, 40,
                               torch.device("cuda", 3), (0, [2], 1.0, 4)).llm.env["LOCAL_RANK"] == "3"


def test_a_single_process_gets_a_rendezvous_for_vllm_and_is_left_as_it_was(fake_vllm, monkeypatch):
    """One learner on one GPU (no launcher): vLLM makes its world of 1 from the variables set while it starts; they are
    gone afterwards (LOCAL_RANK would make hydralign's launcher take the process for a rank torchrun started). Its
    random states are the learner's again (vLLM's worker seeds them all)."""
    from omegaconf import OmegaConf

    for key in FakeLLM.ENV:
        monkeypatch.delenv(key, raising=False)

    def draw():
        return random.random(), float(numpy.random.rand()), float(torch.rand(1))

    random.seed(5), numpy.random.seed(5), torch.manual_seed(5)
    expected = draw()
    random.seed(5), numpy.random.seed(5), torch.manual_seed(5)
    engine = ColocatedVLLM.start(SimpleNamespace(config=_tiny_config()), OmegaConf.create({**GCFG, "vllm_sleep": False}),
                                 0, 1, 0, 40, torch.device("cpu"), (0, [2], 1.0, 4))
    assert draw() == expected
    seen = engine.llm.env
    assert (seen["RANK"], seen["LOCAL_RANK"], seen["WORLD_SIZE"], seen["MASTER_ADDR"]) == ("0", "0", "1", "127.0.0.1")
    assert int(seen["MASTER_PORT"]) > 0
    assert not any(k in os.environ for k in FakeLLM.ENV)
    # sleep mode always on (it sleeps once training ends); vllm_sleep=false: awake between rollout batches
    assert engine.llm.kwargs["enable_sleep_mode"] is True and engine.llm.calls == [] and not engine.asleep


# --- the generators' weights: streamed into the engine as they are received ------------------------------------------
class FakeGroup:
    """The weights group as a generator sees it: each broadcast delivers the next of ``sent`` (the header first)."""

    def __init__(self, sent):
        self.sent, self.count = list(sent), 0

    def broadcast(self, tensors, opts):
        tensors[0].copy_(self.sent[self.count])
        self.count += 1
        return SimpleNamespace(wait=lambda: None)


class FakeStore:
    def __init__(self):
        self.values = {}

    def set(self, key, value):
        self.values[key] = value

    def get(self, key):
        return self.values[key]

    def delete_key(self, key):
        self.values.pop(key)


# known bytes: a transposed (non-contiguous) float32 [[0, 2, 4], [1, 3, 5]] and float64 [5, 6], little-endian
SENT = [torch.arange(6, dtype=torch.float32).view(3, 2).t(), torch.tensor([5.0, 6.0], dtype=torch.float64)]
SENT_BYTES = struct.pack("<6f", 0, 2, 4, 1, 3, 5) + struct.pack("<2d", 5, 6)
LAYOUT = [("weight", torch.float32, (2, 3)), ("bias", torch.float64, (2,))]


def _generator_channel(store=None):
    from hydralign.rollout_workers.channel import Channel

    group = FakeGroup([torch.tensor([3]), *SENT])
    return Channel(store or FakeStore(), group, 1, 1, None, 0, torch.device("cpu")), group


def test_the_vllm_generator_takes_each_tensor_as_it_is_received(fake_vllm):
    """No receive buffers for the whole model: each tensor lands in a buffer of its own when the engine's loader asks
    for it, and the previous one is gone by then (one received tensor beside the engine's weights)."""
    from omegaconf import OmegaConf

    from hydralign.rollout_workers.engines import VLLMEngine

    engine = VLLMEngine(_tiny_config(), OmegaConf.create(GCFG), 0, [2], 1.0, 4, 8, 0, LAYOUT)
    assert "distributed_executor_backend" not in engine.llm.kwargs and engine.llm.kwargs["max_model_len"] == 12
    channel, group = _generator_channel()
    seen, refs = [], []

    def on_load(name, tensor):
        seen.append((name, group.count, tensor.clone(), [r() is None for r in refs]))
        refs.append(weakref.ref(tensor))

    engine.llm.on_load = on_load
    version, weights = channel.recv_weights(LAYOUT, engine.targets())
    assert version == 3 and group.count == 1  # the header: no tensor received before the engine takes it
    engine.load(weights)
    weights.finish()
    assert [(n, count, released) for n, count, _, released in seen] == [("weight", 2, []), ("bias", 3, [True])]
    assert all(torch.equal(t, s) for (_, _, t, _), s in zip(seen, SENT))
    assert engine.llm.calls == ["load", "reset_prefix_cache"]


def test_the_hf_generator_receives_in_place_where_it_can_and_copies_the_rest():
    from hydralign.rollout_workers.engines import HFEngine

    model = torch.nn.Linear(3, 2)  # float32 weight (the broadcast lands in it) and float32 bias (sent as float64)
    engine = HFEngine(model, torch.device("cpu"), 0, [2], 1.0, 4, 2, LAYOUT)
    targets = engine.targets()
    assert targets[0].data_ptr() == model.weight.data_ptr() and targets[1] is None
    channel, _ = _generator_channel()
    _, weights = channel.recv_weights(LAYOUT, targets)
    engine.load(weights)
    weights.finish()
    assert torch.equal(model.weight.detach(), SENT[0]) and torch.equal(model.bias.detach(), SENT[1].float())
    with pytest.raises(RuntimeError, match="does not match the learners'"):
        HFEngine(torch.nn.Linear(3, 2), torch.device("cpu"), 0, [2], 1.0, 4, 2,
                 [("weight", torch.float32, (3, 2)), ("bias", torch.float32, (2,))])


def test_both_ends_checksum_the_bytes_of_the_weights_as_sent(monkeypatch):
    """HYDRALIGN_VERIFY_SYNC=1: the generator's running digest of what it received, and learner 0's of what it sent,
    are SHA-256 of the tensors' bytes (contiguous, in order), computed here from the values alone."""
    from hydralign.rollout_workers.channel import Channel

    monkeypatch.setenv("HYDRALIGN_VERIFY_SYNC", "1")
    expected = hashlib.sha256(SENT_BYTES).hexdigest()
    store = FakeStore()
    channel, _ = _generator_channel(store)
    _, weights = channel.recv_weights(LAYOUT)
    assert "checksum/0/3" not in store.values
    for _ in weights:
        pass
    assert pickle.loads(store.values["checksum/0/3"]) == expected
    sender = Channel(store, SimpleNamespace(broadcast=lambda tensors, opts: SimpleNamespace(wait=lambda: None)), 1, 1,
                     0, None, torch.device("cpu"))
    assert sender.send_weights(iter(zip(["weight", "bias"], SENT)), 3) == expected


def test_a_stream_the_engine_left_unfinished_is_received_to_the_end_and_fails():
    channel, group = _generator_channel()
    _, weights = channel.recv_weights(LAYOUT)
    next(iter(weights))
    with pytest.raises(RuntimeError, match="left 1 of the 2 tensors untaken"):
        weights.finish()
    assert group.count == 3  # learner 0 is not left in a broadcast


# --- GRPO's wiring of the learner's own engine -----------------------------------------------------------------------
def test_grpo_builds_its_engine_samples_with_it_and_logs_the_load(fake_vllm, monkeypatch):
    """on_train_start builds the engine (seed + rank, the longest prompt + max_completion_length), the rollout is
    sampled by it with the sampler's log-probs kept for importance sampling, time/weight_sync_s is logged, and the
    engine sleeps once the epoch's training is done."""
    from hydralign.methods.grpo import GRPOModule
    from hydralign.models import build_model, tokenizer_and_template

    monkeypatch.setattr("hydralign.rollout_workers.colocated.launcher_env", lambda *a, **k: {})
    cfg = compose_cfg(COLOCATED + ["method.prompts_per_step=2", "method.num_generations=2",
                                   "method.max_completion_length=4", "generation.vllm_sleep=false", "seed=11"])
    plan = make_plan(cfg)
    tokenizer, _ = tokenizer_and_template(cfg.model)
    module = GRPOModule(build_model(cfg.model, tokenizer, cfg.seed, cfg.peft), tokenizer, plan, cfg, [], [2])
    prompts = [[5, 6, 7], [8, 9], [10]]
    logged: dict = {}
    module.trainer = SimpleNamespace(global_rank=3, world_size=1, global_step=0, log_every_n_steps=1,
                                     datamodule=SimpleNamespace(train_examples=[SimpleNamespace(prompt_ids=p)
                                                                                for p in prompts]))
    module.log_dict = lambda values, **kw: logged.update(values)
    module.on_train_start()
    llm = module._colocated.llm
    assert (llm.kwargs["seed"], llm.kwargs["max_model_len"]) == (11 + 3, 3 + 4)
    batch = {"prompt_ids": prompts[:2], "references": ["1", "2"], "rollout": 0}
    module.on_train_batch_start(batch, 0)
    rollout = module._make_rollout(batch)
    assert llm.calls == ["load", "reset_prefix_cache", "generate"] and llm.loaded[0] == "model.embed_tokens.weight"
    assert rollout.sampler_logps.tolist() == [[-0.5, 0.0], [-0.5, -0.5]] * 2  # vLLM's, for importance sampling
    assert rollout.completion.tolist() == [[7, 0], [7, 7]] * 2
    module.on_train_batch_end(None, {"window_last": True, "first_step": True}, 0)
    assert logged["time/weight_sync_s"] == module._load_s > 0 and "time/generation_s" in logged
    module.on_train_epoch_end()
    module.on_train_end()
    assert llm.calls[-1] == "sleep 2" and llm.calls.count("sleep 2") == 1
