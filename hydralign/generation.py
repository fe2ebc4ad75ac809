"""Generation shared by evaluation (greedy answers scored by exact match), sequence-level distillation
(the teacher's greedy answers) and MiniLLM (the student's samples, optionally mixed with the teacher's
distribution). Prompts are token-id lists; every function returns, per prompt, ``(tokens, stopped)``:
the new tokens up to the first stop token and whether one came (``keep_stop`` keeps that stop token, as a
training target must: the data's completions end with it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

Completion = tuple[list[int], bool]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, W], attention mask [B, W]) with every prompt right-aligned: new tokens follow directly."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def cut_at_stop(rows: Sequence[Sequence[int]], stop_ids: Sequence[int], keep_stop: bool = False) -> list[Completion]:
    stops = set(stop_ids)
    out = []
    for row in rows:
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        if cut is None:
            out.append((list(row), False))
        else:
            out.append((list(row[:cut + 1] if keep_stop else row[:cut]), True))
    return out


@torch.no_grad()
def greedy(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], max_new_tokens: int,
           device: torch.device, synced: bool = False, keep_stop: bool = False) -> list[Completion]:
    """Greedy decoding of a left-padded batch with Hugging Face ``generate``. ``synced``: the weights are
    sharded over ranks (FSDP2, ZeRO-3), so every rank keeps stepping until all are done."""
    ids, mask = left_pad(prompts, pad_id)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=list(stop_ids), pad_token_id=pad_id, synced_gpus=synced)
    return cut_at_stop(out[:, ids.shape[1]:].tolist(), stop_ids, keep_stop)


def _step(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
          ) -> tuple[torch.Tensor, Any]:
    """Logits of the last position [B, V] (fp32) and the updated KV cache."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return out.logits[:, -1].float(), out.cache


@torch.no_grad()
def sample(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], max_new_tokens: int,
           device: torch.device, row_seeds: Sequence[int], mix_model: Optional[Any] = None, mix_alpha: float = 0.0,
           vocab_size: Optional[int] = None, synced: bool = False, keep_stop: bool = True) -> list[Completion]:
    """Ancestral sampling at temperature 1 from ``model`` or, with ``mix_model``, from the token-level mixture
    ``(1 - mix_alpha) q + mix_alpha p`` of the two models' next-token distributions (MiniLLM's teacher-mixed
    sampling, https://arxiv.org/abs/2306.08543 section 2.2: q the student, p the teacher).

    Each prompt draws from its own generator seeded by ``row_seeds[i]`` (Gumbel-max on that row's uniforms),
    so a prompt's sample does not depend on which other prompts share its batch, device or step split.
    Both models keep a KV cache; positions follow the left padding. ``vocab_size`` cuts both models' logits
    to the shared tokenizer's size (a padded embedding may have extra rows). ``synced``: sharded weights,
    every rank runs all ``max_new_tokens`` forwards."""
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator().manual_seed(int(s) % (2 ** 63)) for s in row_seeds]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    cache = mix_cache = None
    step_ids, step_pos = ids, positions
    for _ in range(max_new_tokens):
        logits, cache = _step(model, step_ids, mask, step_pos, cache)
        logits = logits[:, :vocab_size]
        probs = torch.softmax(logits, dim=-1)
        if mix_model is not None:
            mix_logits, mix_cache = _step(mix_model, step_ids, mask, step_pos, mix_cache)
            probs = (1 - mix_alpha) * probs + mix_alpha * torch.softmax(mix_logits[:, :vocab_size], dim=-1)
        # Gumbel-max: argmax(log p + G) with G = -log(-log U) is a draw from p; U comes from each row's generator.
        uniform = torch.stack([torch.rand(probs.shape[-1], generator=g, dtype=torch.float64) for g in gens])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300))).to(device)
        token = (torch.log(probs.double()) + gumbel).argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        new.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) and not synced:
            break
        step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in prompts]
    return cut_at_stop(rows, stop_ids, keep_stop)


# --- online RL: groups of samples per prompt (GRPO's rollouts, in the learners or in generator processes) -----------
def rollout_seed(seed: int, rollout_index: int, shard: int) -> int:
    """The sampling seed of rollout batch ``rollout_index`` for the prompts of learner ``shard``: a pure function,
    so a resumed run, and a generator process sampling for that learner, draw the same completions."""
    return ((seed * 1_000_003 + rollout_index) * 4099 + shard) % (2 ** 63)


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding), as ``generate`` uses them."""
    return (attention.cumsum(dim=1) - 1).clamp(min=0)


def completion_logps(model: Any, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                     width: int, temperature: float) -> torch.Tensor:
    """Log-probs [B, T] of the completion tokens ``ids[:, width:]`` under ``model`` at ``temperature``."""
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, width - 1:-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, width:].unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_groups(model: Any, prompts: Sequence[Sequence[int]], generations: int, pad_id: int,
                  stop_ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int, device: torch.device,
                  synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(prompt + completion ids [N, Wp + T], attention over the prompt part [N, Wp], Wp) for every prompt repeated
    ``generations`` times (adjacent), sampled at ``temperature`` (top_k 0, top_p 1) with Hugging Face ``generate``
    under a forked RNG seeded by ``seed``."""
    ids, mask = left_pad([p for p in prompts for _ in range(generations)], pad_id)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, temperature=float(temperature),
            top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
            use_cache=True, synced_gpus=synced)
    return out, mask.to(device), ids.shape[1]


def finish_rollout(out: torch.Tensor, prompt_mask: torch.Tensor, width: int, stop_ids: Sequence[int],
                   pad_id: int) -> dict[str, torch.Tensor]:
    """Sampled rows [N, Wp + T] -> the completion through its first stop token (as TRL; later tokens padded), and
    the ids, attention and positions the loss's forward passes use: ``ids``, ``attention``, ``positions``
    [N, Wp + T], ``completion``, ``completion_mask`` [N, T], ``stopped`` [N] and ``first`` [N] (the stop's column,
    T where none came)."""
    completion = out[:, width:]
    t = completion.shape[1]
    is_stop = torch.isin(completion, torch.tensor(list(stop_ids), device=completion.device))
    stopped = is_stop.any(dim=1)
    first = torch.where(stopped, is_stop.int().argmax(dim=1), torch.full_like(stopped, t, dtype=torch.long))
    cols = torch.arange(t, device=completion.device).unsqueeze(0)
    completion_mask = (cols <= first.unsqueeze(1)) & (cols < t)
    completion = torch.where(completion_mask, completion, torch.full_like(completion, pad_id))
    ids = torch.cat([out[:, :width], completion], dim=1)
    attention = torch.cat([prompt_mask.to(completion.device), completion_mask.long()], dim=1)
    return {"ids": ids, "attention": attention, "positions": position_ids(attention), "completion": completion,
            "completion_mask": completion_mask, "stopped": stopped, "first": first}
