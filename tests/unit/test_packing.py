"""Padding-free and packed rows (hydralign.data.packing): bins, collation, and the same per-example
losses and step gradients as padded rows, with attention kept inside each example."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hydralign.data.batching import TrainMicroBatches, WindowSchedule, collate, collate_items
from hydralign.data.packing import collate_rows, pack_rows, packed_items
from hydralign.data.preference import PairExample
from hydralign.data.tokenize import IGNORE, Example
from hydralign.losses.preference import preference_loss
from hydralign.losses.token_ce import segment_logps, sequence_logps, token_nll_sum
from hydralign.methods.dpo import pair_logps
from hydralign.models.inputs import model_inputs

LENGTHS = [5, 17, 3, 30, 9, 12, 20]


def test_best_fit_decreasing_by_hand():
    # 30 opens row 0 (2 free); 20 opens row 1 (12 free); 17 fits neither: row 2 (15 free); 12 fills row 1
    # exactly (the tightest fit); 9 -> row 2 (6 free); 5 -> row 2 (1 free); 3 fits nowhere: row 3.
    assert pack_rows(LENGTHS, 32, seed=0) == [[3], [6, 5], [1, 4, 0], [2]]


def test_bins_hold_every_example_once_within_capacity_and_depend_on_the_seed_only_for_ties():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 64, (500,), generator=g).tolist()
    rows = pack_rows(lengths, 64, seed=3)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert sum(lengths) / (64 * len(rows)) > 0.95  # nearly full rows
    assert pack_rows(lengths, 64, seed=3) == rows  # a pure function
    tied = [4] * 8
    assert pack_rows(tied, 8, seed=0) != pack_rows(tied, 8, seed=1)  # which equal examples share a row


def test_an_example_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="example 1 has 40 tokens, more than a row's 32"):
        pack_rows([5, 40], 32, seed=0)


def _examples(lengths, seed=1, prompt=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 50, (n,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def test_collated_rows_restart_positions_and_never_target_an_examples_first_token():
    a = Example([7, 8, 9], [7, 8, 9])  # a target on every token, the first included
    b = Example([4, 5], [IGNORE, 5])
    batch = collate_rows([[a, b], [b]], pad_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9, 4, 5], [4, 5, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["segments"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]
    assert batch["labels"].tolist() == [[IGNORE, 8, 9, IGNORE, 5], [IGNORE, 5, IGNORE, IGNORE, IGNORE]]
    # The targets after the shift are exactly the examples' own: as many as the padded rows have.
    assert int((batch["labels"][:, 1:] != IGNORE).sum()) == a.num_loss_tokens + 2 * b.num_loss_tokens


def test_a_pairs_chosen_and_rejected_share_a_row_numbered_as_the_padded_rows():
    p = [PairExample(Example([1, 2], [IGNORE, 2]), Example([1, 3, 3], [IGNORE, 3, 3])),
         PairExample(Example([4, 5], [IGNORE, 5]), Example([4, 6], [IGNORE, 6]))]
    batch = collate_rows([p], pad_id=0)
    # chosen 0, 1 then rejected 2, 3 (as collate_items orders padded rows), each pair side by side.
    assert batch["segments"].tolist() == [[0, 0, 2, 2, 2, 1, 1, 3, 3]]


def _model(impl: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = impl
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_per_example_losses_equal_the_padded_ones_and_no_example_sees_another(impl):
    model, exs = _model(impl), _examples([5, 17, 3, 30, 9])
    padded = collate(exs, 0)
    want, want_n = sequence_logps(model(**model_inputs(padded)).logits, padded["labels"])
    packed = collate_rows([exs], 0)
    got, got_n = segment_logps(model(**model_inputs(packed)).logits, packed["labels"], packed["segments"], len(exs))
    assert torch.equal(got_n, want_n)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    # The same row under a plain causal mask: later examples attend to earlier ones, and their losses move.
    plain, _ = segment_logps(model(input_ids=packed["input_ids"], use_cache=False).logits, packed["labels"],
                             packed["segments"], len(exs))
    assert torch.allclose(plain[:1], want[:1], atol=1e-5)  # the first example has nothing before it
    assert (plain[1:] - want[1:]).abs().max() > 1e-3


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_sft_step_gradients_equal_padded_padding_free_and_packed():
    model, exs = _model("sdpa"), _examples([5, 17, 3, 30, 9, 12, 20, 7])
    units = sum(e.num_loss_tokens for e in exs)

    def step(batches):  # one optimizer step's loss: the sum over its micro-batches, divided once
        total = sum(token_nll_sum(model(**model_inputs(b)).logits, b["labels"])[0] for b in batches)
        return total / units

    padded = _grads(model, step([collate(exs[:4], 0), collate(exs[4:], 0)]))
    free = _grads(model, step([collate_rows([exs[:4]], 0), collate_rows([exs[4:]], 0)]))
    rows = pack_rows([len(e.input_ids) for e in exs], 32, seed=0)
    packed = _grads(model, step([collate_rows([[exs[i] for i in r] for r in rows], 0)]))
    for name in padded:
        torch.testing.assert_close(free[name], padded[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [None, 7])
def test_dpo_step_gradients_equal_padded_and_packed(chunk):
    model = _model("sdpa")
    c, r = _examples([6, 11, 4], seed=2), _examples([9, 5, 13], seed=3)
    pairs = [PairExample(ci, ri) for ci, ri in zip(c, r)]
    ref = torch.tensor([-40.0, -35.0, -20.0]), torch.tensor([-50.0, -30.0, -45.0])

    def loss(batch):
        logps, _ = pair_logps(model, batch, chunk)
        losses, _, _ = preference_loss(logps[:3], logps[3:], ref[0], ref[1], loss_type=["sigmoid"], beta=0.1)
        return losses.sum() / 3, logps

    padded_loss, padded_logps = loss(collate_items(pairs, [0, 1, 2], 0))
    padded = _grads(model, padded_loss)
    batch = collate_rows([pairs[:2], pairs[2:]], 0)
    batch["real"] = torch.ones(3, dtype=torch.bool)
    packed_loss, packed_logps = loss(batch)
    torch.testing.assert_close(packed_logps, padded_logps, atol=1e-5, rtol=1e-6)
    packed = _grads(model, packed_loss)
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-4)


def test_packed_rows_are_the_schedule_items_and_carry_their_examples_units():
    exs = _examples(LENGTHS)
    units = [e.num_loss_tokens for e in exs]
    rows = packed_items(exs, units, 32, seed=0)
    assert [r.members for r in rows] == [(3,), (6, 5), (1, 4, 0), (2,)]
    assert [r.units for r in rows] == [units[3], units[6] + units[5], units[1] + units[4] + units[0], units[2]]
    schedule = WindowSchedule([r.units for r in rows], effective=2, micro=1, world_size=1, rank=0, seed=0)
    data = TrainMicroBatches(exs, schedule, 0, total_steps=2, packing="packed", rows=rows)
    first, second = data[0], data[1]  # one window of 2 rows, one row per micro-batch
    window = schedule.window(0).tolist()
    assert first["window_units"] == rows[window[0]].units + rows[window[1]].units
    assert first["index"].tolist() == list(rows[window[0]].members)
    assert second["window_last"] and not first["window_last"]
    one = TrainMicroBatches(exs, WindowSchedule([r.units for r in rows], 2, 2, 1, 0, 0), 0, 1, "packed", rows,
                            one_row=True)[0]
    assert one["input_ids"].shape[0] == 1 and one["index"].numel() == sum(len(rows[w].members) for w in window)
