"""hydralign.generation: greedy decoding as evaluation uses it, and MiniLLM's sampling (per-prompt
generators, the teacher-mixed distribution, KV caches that agree with a full forward)."""

from __future__ import annotations

import pytest
import torch

from hydralign.generation import cut_at_stop, greedy, left_pad, sample

PAD, STOP = 0, 1


def tiny(seed: int, vocab: int = 12):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, pad_token_id=PAD))
    return model.eval()


def test_left_pad_and_cut_at_stop():
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    rows = [[4, 5, STOP, 6], [4, 5, 6]]
    assert cut_at_stop(rows, [STOP]) == [([4, 5], True), ([4, 5, 6], False)]
    assert cut_at_stop(rows, [STOP], keep_stop=True) == [([4, 5, STOP], True), ([4, 5, 6], False)]


def test_a_prompts_sample_does_not_depend_on_its_batch():
    model = tiny(0)
    prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11]]
    together = sample(model, prompts, PAD, [STOP], 6, torch.device("cpu"), row_seeds=[11, 12, 13])
    alone = [sample(model, [p], PAD, [STOP], 6, torch.device("cpu"), row_seeds=[s])[0]
             for p, s in zip(prompts, [11, 12, 13])]
    assert together == alone
    other_seed = sample(model, prompts[:1], PAD, [STOP], 6, torch.device("cpu"), row_seeds=[99])
    assert len({tuple(together[0][0]), tuple(other_seed[0][0])}) == 2  # the seed, not the batch, decides


def test_samples_follow_the_teacher_mixed_distribution():
    """One new token, 4000 prompts with their own seeds: frequencies match (1 - a) q + a p within 0.03."""
    student, teacher = tiny(1), tiny(2)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(30)  # a confident teacher: the mixture moves away from the student's q
    prompt = [3, 4, 5]
    with torch.no_grad():
        q = torch.softmax(student(torch.tensor([prompt])).logits[0, -1], -1)
        p = torch.softmax(teacher(torch.tensor([prompt])).logits[0, -1], -1)
    n, alpha = 4000, 0.6
    drawn = sample(student, [prompt] * n, PAD, [], 1, torch.device("cpu"), row_seeds=range(n), mix_model=teacher,
                   mix_alpha=alpha)
    freq = torch.bincount(torch.tensor([t[0] for t, _ in drawn]), minlength=12).double() / n
    expected = (1 - alpha) * q + alpha * p
    assert (freq - expected.double()).abs().max() < 0.03
    assert (expected - q).abs().max() > 0.05  # the mixture is not the student's own distribution


def test_the_kv_cached_loop_equals_full_forwards():
    """A head scaled x 5000 makes every next-token distribution one-hot in practice, so a draw is the argmax:
    the cached, left-padded loop must then pick what a full forward over prompt + tokens so far picks."""
    model = tiny(3)
    with torch.no_grad():
        model.lm_head.weight.mul_(5000)
    prompts = [[3, 4, 5, 6, 7], [8, 9]]
    for drawn in (sample(model, prompts, PAD, [STOP], 5, torch.device("cpu"), row_seeds=[1, 2], keep_stop=True),
                  greedy(model, prompts, PAD, [STOP], 5, torch.device("cpu"), keep_stop=True)):
        for prompt, (tokens, _) in zip(prompts, drawn):
            seq = list(prompt)
            for tok in tokens:
                with torch.no_grad():
                    probs = torch.softmax(model(torch.tensor([seq])).logits[0, -1].double(), -1)
                assert int(probs.argmax()) == tok and probs[tok] > 0.999
                seq.append(tok)
            assert len(tokens) >= 2


def test_sampling_stops_at_the_stop_token_and_keeps_it():
    model = tiny(4)
    drawn = sample(model, [[3, 4]] * 64, PAD, [STOP, 2], 8, torch.device("cpu"), row_seeds=range(64))
    for tokens, stopped in drawn:
        assert len(tokens) <= 8
        if stopped:
            assert tokens[-1] in (STOP, 2) and not set(tokens[:-1]) & {STOP, 2}
        else:
            assert len(tokens) == 8 and not set(tokens) & {STOP, 2}
    assert any(s for _, s in drawn)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_vocab_size_cuts_padded_rows(alpha):
    model, teacher = tiny(5, vocab=16), tiny(6, vocab=16)
    drawn = sample(model, [[3, 4]] * 32, PAD, [STOP], 4, torch.device("cpu"), row_seeds=range(32),
                   mix_model=teacher, mix_alpha=alpha, vocab_size=10)
    assert all(t < 10 for tokens, _ in drawn for t in tokens)
