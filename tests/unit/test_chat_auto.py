"""model.chat_template=auto: the tokenizer's own Jinja template gives the same tokens and masks as the
hand-written templates, masks from {% generation %} markers, Llama-3 and DeepSeek-style templates."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from hydralign.data.chat import get_template, template_for
from hydralign.data.chat_auto import AutoChatTemplate
from hydralign.data.templates import CHATML, TULU
from hydralign.data.tokenize import IGNORE, encode, generation_examples, tokenize_segments
from hydralign.errors import ConfigError
from hydralign.models import char_tokenizer

CONVS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="},
     {"role": "assistant", "content": "3"}, {"role": "user", "content": "and 2+2?"},
     {"role": "assistant", "content": "4, since\n2+2 = 4. "}],
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
    [{"role": "system", "content": "You add."}, {"role": "user", "content": "9+9="},
     {"role": "assistant", "content": "18"}],
]
PROMPTS = [c[:-1] for c in CONVS]


def char_tok(jinja: str, tokenizer_adds_bos: bool = False):
    tok = char_tokenizer()
    tok.chat_template = jinja
    if tokenizer_adds_bos:  # like a Llama tokenizer: BOS on every ordinary encode
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def bpe_tok(jinja: str, bos: str, eos: str, markers: list[str]):
    """A small byte-level BPE (GPT-2/Llama-3 style) trained here, markers as special tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [m["content"] for conv in CONVS for m in conv] * 20 + ["User: Assistant: system user assistant"] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[bos, eos, *markers], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                  additional_special_tokens=markers)
    tok.chat_template = jinja
    return tok


def trained_pieces(tok, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, run = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE:
            run.append(t)
        elif run:
            runs.append(run)
            run = []
    return [tok.decode(r) for r in runs + ([run] if run else [])]


# (hand-written template, the tokenizer's chat template, whether the tokenizer itself adds BOS)
CASES = {
    "chatml": (CHATML, CHATML.jinja, False),
    # TULU adds BOS as a token before its text; the same BOS can come from the template's text ...
    "tulu_bos_in_template": (TULU, "{{ bos_token }}" + TULU.jinja, False),
    # ... or from a tokenizer that prepends BOS itself while the template writes none (auto add_bos)
    "tulu_tokenizer_adds_bos": (TULU, TULU.jinja, True),
}


@pytest.mark.parametrize("case", CASES)
def test_auto_equals_hand_written(case):
    hand, jinja, tokenizer_adds_bos = CASES[case]
    tok = char_tok(jinja, tokenizer_adds_bos)
    auto = template_for("auto", tok)
    assert auto.add_bos == tokenizer_adds_bos and auto.special_tokens == () and auto.jinja == jinja
    for train_on_all in (False, True):
        got, stats_a = encode(tok, auto, CONVS, max_len=512, overlong="truncate", train_on_all=train_on_all)
        want, stats_h = encode(tok, hand, CONVS, max_len=512, overlong="truncate", train_on_all=train_on_all)
        assert [(e.input_ids, e.labels) for e in got] == [(e.input_ids, e.labels) for e in want]
        assert vars(stats_a) == vars(stats_h) and stats_a.kept == len(CONVS)
    eos = tok.eos_token
    last_a = tokenize_segments(tok, auto, [auto.render(c, eos, last_turn_only=True) for c in CONVS])
    last_h = tokenize_segments(tok, hand, [hand.render(c, eos, last_turn_only=True) for c in CONVS])
    assert last_a == last_h
    assert trained_pieces(tok, *last_a[0]) == ["4, since\n2+2 = 4. " + hand.close("assistant", eos)]
    for prompt in PROMPTS:
        assert auto.render_prompt(prompt, eos) == (tok.bos_token if case == "tulu_bos_in_template" else "") + \
            hand.render_prompt(prompt, eos)
    gen_a, gen_h = generation_examples(tok, auto, CONVS), generation_examples(tok, hand, CONVS)
    assert [(g.prompt_ids, g.reference) for g in gen_a] == [(g.prompt_ids, g.reference) for g in gen_h]
    assert auto.stop_tokens(eos) == hand.stop_tokens(eos)


GENERATION_JINJA = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}{% else %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_generation_markers_give_the_mask():
    # the block includes the newline after <|im_end|>: prefix renders would stop before it
    tok = char_tok(GENERATION_JINJA)
    auto = template_for("auto", tok)
    assert auto.has_generation_tags
    examples, _ = encode(tok, auto, CONVS, max_len=512, overlong="truncate")
    ex = examples[0]
    assert trained_pieces(tok, ex.input_ids, ex.labels) == ["3<|im_end|>\n", "4, since\n2+2 = 4. <|im_end|>\n"]
    hf = tok.apply_chat_template(CONVS[0], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ex.input_ids == hf["input_ids"]
    assert [int(lab != IGNORE) for lab in ex.labels] == hf["assistant_masks"]
    (ids, labels), = tokenize_segments(tok, auto, [auto.render(CONVS[0], tok.eos_token, last_turn_only=True)])
    assert trained_pieces(tok, ids, labels) == ["4, since\n2+2 = 4. <|im_end|>\n"]
    assert auto.stop_tokens(tok.eos_token) == ["</s>", "<|im_end|>"]


LLAMA3_JINJA = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def test_llama3_style_template():
    tok = bpe_tok(LLAMA3_JINJA, "<|begin_of_text|>", "<|end_of_text|>",
                  ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    auto = template_for("auto", tok)
    assert not auto.add_bos and auto.bos_text == "<|begin_of_text|>"  # the template writes BOS
    examples, _ = encode(tok, auto, CONVS, max_len=512, overlong="truncate")
    for ex, conv in zip(examples, CONVS):
        # exactly the ids of the whole render (what apply_chat_template(tokenize=True) gives)
        assert ex.input_ids == tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE
        replies = [m["content"].strip() + "<|eot_id|>" for m in conv if m["role"] == "assistant"]
        assert trained_pieces(tok, ex.input_ids, ex.labels) == replies
    assert auto.render_prompt(PROMPTS[1], tok.eos_token).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert auto.stop_tokens(tok.eos_token) == ["<|end_of_text|>", "<|eot_id|>"]


DEEPSEEK_JINJA = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}")


def test_deepseek_llm_chat_style_template():
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok = bpe_tok(DEEPSEEK_JINJA, bos, eos, [])
    auto = template_for("auto", tok)
    assert not auto.add_bos and auto.bos_text == bos
    examples, _ = encode(tok, auto, CONVS, max_len=512, overlong="truncate")
    for ex, conv in zip(examples, CONVS):
        assert ex.input_ids == tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        # the generation prompt is "Assistant:" (no space): the model writes " " + reply + eos, and the
        # byte-level BPE carries that space in the reply's first token
        replies = [" " + m["content"] + eos for m in conv if m["role"] == "assistant"]
        assert trained_pieces(tok, ex.input_ids, ex.labels) == replies
    prompt = auto.render_prompt(PROMPTS[1], eos)
    assert prompt == bos + "User: Capital of France?\n\nAssistant:"
    assert auto.stop_tokens(eos) == [eos]


def test_whole_string_tokenization_where_pieces_would_differ():
    # SentencePiece-style Metaspace adds "▁" at the start of every separately tokenized piece
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    core.decoder = decoders.Metaspace(prepend_scheme="first")
    corpus = [m["content"] for conv in CONVS for m in conv] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML.jinja
    auto = template_for("auto", tok)
    ex = encode(tok, auto, CONVS[1:2], max_len=512, overlong="truncate")[0][0]
    assert ex.input_ids == tok.apply_chat_template(CONVS[1], tokenize=True, return_dict=True)["input_ids"]
    pieces = encode(tok, CHATML, CONVS[1:2], max_len=512, overlong="truncate")[0][0]
    assert pieces.input_ids != ex.input_ids  # why auto tokenizes the whole string
    assert tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]) == "Paris<|im_end|>"


def test_templates_that_rewrite_earlier_text_are_refused():
    # Qwen3-like: only the final assistant turn gets a thinking stub, so earlier turns change later
    stub = ("{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' and loop.last %}"
            "{{ '<think></think>' }}{% endif %}{{ m['content'] + '</s>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant: <think></think>' }}{% endif %}")
    auto = template_for("auto", char_tok(stub))
    with pytest.raises(ConfigError, match="generation"):
        auto.render(CONVS[0], "</s>")
    # the final turn alone is still exact (a preference pair's completion): it follows the stub
    segs = auto.render(CONVS[0], "</s>", last_turn_only=True)
    assert [t for t, trainable in segs if trainable] == ["4, since\n2+2 = 4. </s>"]
    # the eos moves from the last message to the next once one follows: even the final turn's prompt
    # differs from what generation would see
    moving = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %}{{ '</s>' }}"
              "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    with pytest.raises(ConfigError, match="message 4"):
        template_for("auto", char_tok(moving)).render(CONVS[0], "</s>", last_turn_only=True)


def test_errors_say_what_to_set():
    with pytest.raises(ConfigError, match="model.chat_template=chatml or model.chat_template=tulu"):
        template_for("auto", char_tokenizer())
    with pytest.raises(ConfigError, match="chatml, tulu, auto"):
        template_for("vicuna")
    with pytest.raises(ConfigError, match="chatml, tulu, auto"):
        get_template("vicuna")
    with pytest.raises(ConfigError, match="template_for"):
        get_template("auto")
    assert get_template("chatml") is CHATML and template_for("tulu") is TULU
    assert isinstance(template_for("auto", char_tok(CHATML.jinja)), AutoChatTemplate)
