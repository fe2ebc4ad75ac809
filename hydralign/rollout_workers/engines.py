"""The generator's sampling engines. Each holds a copy of the policy, takes the learners' weights as they arrive
(``targets`` / ``load``: a stream of (name, tensor), one broadcast tensor at a time), and samples one learner's
prompts ``num_generations`` times each, returning the ids the learner's own sampling would (prompt left-padded, then
the completion), the attention over the prompt part, and the log-probs of the completion tokens as the engine
computed them (the importance-sampling correction's denominator).

- ``HFEngine`` (generation.backend=hf): Hugging Face ``generate`` with the same seed and call as the learners'
  sampling, so with the newest weights it draws the same completions; its log-probs are one forward pass over them.
  The broadcast lands in its own parameters where they match (``receive_targets``), else each tensor is copied in.
- ``VLLMEngine`` (generation.backend=vllm): vLLM's offline ``LLM`` in this process (CUDA only; the plan refuses it
  elsewhere); the stream goes through ``collective_rpc`` into the worker's ``model.load_weights``, which copies each
  tensor into its parameter as it comes (so one received tensor at a time beside the engine's weights, never a
  whole copy of the policy in the learners' dtype); log-probs are vLLM's processed (temperature-scaled) log-probs
  of each sampled token.

The vLLM pieces (``vllm_engine``: an engine built from the policy's config alone; ``load_vllm_weights``;
``vllm_sample``) are shared with the learners' own colocated engine (``rollout_workers.colocated``).
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any, Optional

import torch

from hydralign.generation import completion_logps, left_pad, sample_groups


def receive_targets(model: torch.nn.Module, layout: list[tuple[str, Any, tuple]],
                    device: torch.device = torch.device("cpu")) -> list[Optional[torch.Tensor]]:
    """Where each of the learners' broadcast tensors lands (``layout``: name, dtype, shape per tensor of their
    state_dict, in its order; ``device``: CPU over gloo, the generator's GPU over NCCL, ``channel.weights_backend``):
    the model's own tensor where it matches (on ``device``, same dtype, contiguous), else None (the channel receives
    it into a buffer of its own, copied in and released before the next). A model whose names or shapes differ is
    refused."""
    mine = model.state_dict()
    names = [n for n, _, _ in layout]
    if list(mine) != names or any(tuple(mine[n].shape) != tuple(s) for n, _, s in layout):
        raise RuntimeError(f"the generator's model does not match the learners' ({len(mine)} tensors vs "
                           f"{len(names)}; first names {list(mine)[:3]} vs {names[:3]})")
    return [mine[n] if mine[n].device == device and mine[n].dtype == d and mine[n].is_contiguous() else None
            for n, d, _ in layout]


class HFEngine:
    def __init__(self, model: torch.nn.Module, device: torch.device, pad_id: int, stop_ids: list[int],
                 temperature: float, max_new_tokens: int, micro: int, layout: list[tuple[str, Any, tuple]]):
        self.model, self.device = model.to(device).eval(), device
        self.pad_id, self.stop_ids, self.temperature, self.max_new, self.micro = (pad_id, stop_ids, temperature,
                                                                                  max_new_tokens, micro)
        self.tensors = list(self.model.state_dict().values())  # the learners' state_dict order
        self._targets = receive_targets(self.model, layout, device)

    def targets(self) -> list[Optional[torch.Tensor]]:
        return self._targets

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The broadcast as it arrives (``targets``' order): what did not land in place is copied in."""
        with torch.no_grad():
            for (_, received), t in zip(weights, self.tensors):
                if t.data_ptr() != received.data_ptr():
                    t.copy_(received)

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generations: int, seed: int) -> dict[str, Any]:
        from hydralign.generation import finish_rollout

        out, mask, width = sample_groups(self.model, prompts, generations, self.pad_id, self.stop_ids, self.max_new,
                                         self.temperature, seed, self.device)
        done = finish_rollout(out, mask, width, self.stop_ids, self.pad_id)
        ids, attention, positions = done["ids"], done["attention"], done["positions"]
        logps = torch.cat([completion_logps(self.model, ids[i:i + self.micro], attention[i:i + self.micro],
                                            positions[i:i + self.micro], width, self.temperature)
                           for i in range(0, ids.shape[0], self.micro)])
        return {"out": out.cpu(), "prompt_mask": mask.cpu(), "width": width, "sampler_logps": logps.cpu()}


def causal_lm_config(config: Any) -> Any:
    """A copy of the policy's transformers config that names its causal-LM class in ``architectures`` (the class vLLM
    builds). A model built from a config (``LlamaForCausalLM(config)``) leaves it None, and vLLM would then resolve
    the model type to the bare decoder (``LlamaModel``: a pooling model ``generate`` refuses). The name comes from
    transformers' causal-LM mapping of the model type, never from the policy's class (under FSDP2 it is
    ``FSDPLlamaForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    named = copy.deepcopy(config)
    named.architectures = list(config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]])
    return named


def vllm_engine(config: Any, gcfg: Any, seed: int, max_model_len: int, **launch: Any) -> Any:
    """vLLM's offline ``LLM`` for the policy's architecture (``config``: its transformers config) with random
    weights (``load_format="dummy"``): whoever builds it loads the learners' weights next (``load_vllm_weights``),
    so only the config is written to disk (also right under FSDP2, where a learner holds a shard, not the model).
    Token ids in, token ids out: no tokenizer (hydralign's own char tokenizer included). ``launch``: further
    ``LLM`` arguments (the colocated engine's ``distributed_executor_backend``, ``enable_sleep_mode``)."""
    # The engine core in this process, whatever the user's environment says: collective_rpc then calls the loader
    # here with the weights stream as it is (with "1" it would pickle it, CUDA tensors and all, to another process)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    folder = tempfile.mkdtemp(prefix="hydralign-vllm-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    causal_lm_config(config).save_pretrained(folder)  # config.json: the architecture vLLM builds
    return LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, dtype=str(gcfg.vllm_dtype), seed=seed,
               gpu_memory_utilization=float(gcfg.vllm_gpu_memory_utilization), enforce_eager=True,
               max_model_len=max_model_len, logprobs_mode="processed_logprobs", **launch)


def _load_into_worker(worker: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs in vLLM's worker (``LLM.collective_rpc``, in this process): the model's own loader maps Hugging Face
    names (fused q/k/v, gate/up) and copies each tensor in as it comes, so ``weights`` may be a generator."""
    worker.model_runner.model.load_weights(weights=weights)


def load_vllm_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """The policy's weights (Hugging Face names, any dtype and device) into ``llm``, one tensor at a time."""
    llm.collective_rpc(_load_into_worker, args=(weights,))
    llm.reset_prefix_cache()  # cached prefixes were computed with the old weights


def vllm_sample(llm: Any, prompts: list[list[int]], generations: int, seed: int, pad_id: int, stop_ids: list[int],
                temperature: float, max_new_tokens: int) -> dict[str, Any]:
    """Each prompt ``generations`` times, as the other engines return it: the ids (prompt left-padded, then the
    completion), the prompt part's mask and width, and vLLM's log-probs of each sampled token (CPU tensors).

    Request i is seeded ``seed + i x generations``: vLLM seeds a request's n children ``seed + j`` (v1
    ``ParentRequest``), so every sample of the batch has its own seed. Completions stop at hydralign's stop ids
    alone, as HF sampling's do: ``ignore_eos`` keeps vLLM from adding the model config's EOS ids (its generation
    config) to them, while ``stop_token_ids`` still stop (``check_stop``)."""
    from vllm import SamplingParams

    params = [SamplingParams(n=generations, temperature=temperature, top_p=1.0, top_k=0, max_tokens=max_new_tokens,
                             stop_token_ids=list(stop_ids), ignore_eos=True, seed=seed + i * generations, logprobs=0)
              for i in range(len(prompts))]
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
    # (detokenize is off with skip_tokenizer_init; the learner decodes for its verifiers)
    rows, logps = [], []
    for request in outputs:
        for c in request.outputs:
            rows.append(list(c.token_ids))
            logps.append([float(step[t].logprob) for step, t in zip(c.logprobs, c.token_ids)])
    t = max(1, max(len(r) for r in rows))
    ids, mask = left_pad([p for p in prompts for _ in range(generations)], pad_id)
    completion = torch.full((len(rows), t), pad_id, dtype=torch.long)
    sampler = torch.zeros((len(rows), t), dtype=torch.float32)
    for i, (r, lp) in enumerate(zip(rows, logps)):
        completion[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        sampler[i, :len(lp)] = torch.tensor(lp)
    return {"out": torch.cat([ids, completion], dim=1), "prompt_mask": mask, "width": ids.shape[1],
            "sampler_logps": sampler}


class VLLMEngine:
    """vLLM's engine in this generator process, on its own GPU: each broadcast tensor (NCCL) is received into a
    buffer of its own on that GPU and handed to vLLM's loader as it comes (``targets``: none in place)."""

    def __init__(self, config: Any, gcfg: Any, pad_id: int, stop_ids: list[int], temperature: float,
                 max_new_tokens: int, max_prompt_tokens: int, seed: int, layout: list[tuple[str, Any, tuple]]):
        self.llm = vllm_engine(config, gcfg, seed, max_prompt_tokens + max_new_tokens)
        self._targets: list[Optional[torch.Tensor]] = [None] * len(layout)
        self.pad_id, self.stop_ids, self.temperature, self.max_new = pad_id, stop_ids, temperature, max_new_tokens

    def targets(self) -> list[Optional[torch.Tensor]]:
        return self._targets

    def load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_vllm_weights(self.llm, weights)

    def sample(self, prompts: list[list[int]], generations: int, seed: int) -> dict[str, Any]:
        return vllm_sample(self.llm, prompts, generations, seed, self.pad_id, self.stop_ids, self.temperature,
                           self.max_new)
