"""The generator's sampling engines. Each holds a copy of the policy, takes the learners' weights
(``buffers`` / ``load``), and samples one learner's prompts ``num_generations`` times each, returning the ids the
learner's own sampling would (prompt left-padded, then the completion), the attention over the prompt part, and the
log-probs of the completion tokens as the engine computed them (the importance-sampling correction's denominator).

- ``HFEngine`` (generation.backend=hf): Hugging Face ``generate`` with the same seed and call as the learners'
  sampling, so with the newest weights it draws the same completions; its log-probs are one forward pass over them.
- ``VLLMEngine`` (generation.backend=vllm): vLLM's offline ``LLM`` in this process (CUDA only; the plan refuses it
  elsewhere); weights go in through ``collective_rpc`` into the worker's ``model.load_weights``; log-probs are
  vLLM's processed (temperature-scaled) log-probs of each sampled token.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

import torch

from hydralign.generation import completion_logps, left_pad, sample_groups


def receive_buffers(model: torch.nn.Module, layout: list[tuple[str, Any, tuple]]) -> list[torch.Tensor]:
    """CPU tensors the learners' weights are broadcast into, in their order, with their dtypes and shapes
    (``layout``: name, dtype, shape per tensor of the learners' state_dict): the model's own tensors where they
    match (CPU, same dtype, contiguous), else new ones. A model whose names or shapes differ is refused."""
    mine = model.state_dict()
    names = [n for n, _, _ in layout]
    if list(mine) != names or any(tuple(mine[n].shape) != tuple(s) for n, _, s in layout):
        raise RuntimeError(f"the generator's model does not match the learners' ({len(mine)} tensors vs "
                           f"{len(names)}; first names {list(mine)[:3]} vs {names[:3]})")
    return [mine[n] if mine[n].device.type == "cpu" and mine[n].dtype == d and mine[n].is_contiguous()
            else torch.empty(tuple(s), dtype=d) for n, d, s in layout]


class HFEngine:
    def __init__(self, model: torch.nn.Module, device: torch.device, pad_id: int, stop_ids: list[int],
                 temperature: float, max_new_tokens: int, micro: int, layout: list[tuple[str, Any, tuple]]):
        self.model, self.device = model.to(device).eval(), device
        self.pad_id, self.stop_ids, self.temperature, self.max_new, self.micro = (pad_id, stop_ids, temperature,
                                                                                  max_new_tokens, micro)
        self.tensors = list(self.model.state_dict().values())  # the learners' state_dict order
        self._buffers = receive_buffers(self.model, layout)

    def buffers(self) -> list[torch.Tensor]:
        return self._buffers

    def load(self) -> None:
        """After a broadcast into ``buffers``: copy what did not land in place."""
        with torch.no_grad():
            for t, b in zip(self.tensors, self._buffers):
                if t.data_ptr() != b.data_ptr():
                    t.copy_(b)

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


def _load_into_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs in vLLM's worker (``LLM.collective_rpc``): the model's own loader maps Hugging Face names."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """vLLM's engine in this generator process, on its own GPU."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, gcfg: Any, pad_id: int, stop_ids: list[int],
                 temperature: float, max_new_tokens: int, max_prompt_tokens: int, seed: int,
                 layout: list[tuple[str, Any, tuple]]):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: collective_rpc
        from vllm import LLM  # runs the loader callable here, nothing pickled

        self._dir = tempfile.mkdtemp(prefix="hydralign-vllm-")
        atexit.register(shutil.rmtree, self._dir, ignore_errors=True)  # a whole copy of the model: not left behind
        model.save_pretrained(self._dir)  # the architecture (and initial weights; the learners' come next)
        self.names = [n for n, _, _ in layout]
        self._buffers = [torch.empty(tuple(s), dtype=d) for _, d, s in layout]
        # token ids in, token ids out: vLLM never needs the tokenizer (hydralign's own char tokenizer included)
        self.llm = LLM(model=self._dir, skip_tokenizer_init=True, dtype=str(gcfg.vllm_dtype), seed=seed,
                       gpu_memory_utilization=float(gcfg.vllm_gpu_memory_utilization), enforce_eager=True,
                       max_model_len=max_prompt_tokens + max_new_tokens, logprobs_mode="processed_logprobs")
        self.pad_id, self.stop_ids, self.temperature, self.max_new = pad_id, stop_ids, temperature, max_new_tokens

    def buffers(self) -> list[torch.Tensor]:
        return self._buffers

    def load(self) -> None:
        self.llm.collective_rpc(_load_into_worker, args=(list(zip(self.names, self._buffers)),))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def sample(self, prompts: list[list[int]], generations: int, seed: int) -> dict[str, Any]:
        from vllm import SamplingParams

        params = [SamplingParams(n=generations, temperature=self.temperature, top_p=1.0, top_k=0,
                                 max_tokens=self.max_new, stop_token_ids=list(self.stop_ids), seed=seed + i,
                                 logprobs=0) for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        # (detokenize is off with skip_tokenizer_init; the learner decodes for its verifiers)
        rows, logps = [], []
        for request in outputs:
            for c in request.outputs:
                rows.append(list(c.token_ids))
                logps.append([float(step[t].logprob) for step, t in zip(c.logprobs, c.token_ids)])
        t = max(1, max(len(r) for r in rows))
        ids, mask = left_pad([p for p in prompts for _ in range(generations)], self.pad_id)
        completion = torch.full((len(rows), t), self.pad_id, dtype=torch.long)
        sampler = torch.zeros((len(rows), t), dtype=torch.float32)
        for i, (r, lp) in enumerate(zip(rows, logps)):
            completion[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            sampler[i, :len(lp)] = torch.tensor(lp)
        return {"out": torch.cat([ids, completion], dim=1), "prompt_mask": mask, "width": ids.shape[1],
                "sampler_logps": sampler}
