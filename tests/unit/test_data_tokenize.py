"""Tokenisation with real BPE tokenizers: boundary merges, EOS once, chat masks, truncation counts.

The tokenizer is a byte-level BPE trained in the test (a second of work, no files needed); one test
also uses the real GPT-2 BPE from the shared data folder.
"""

import itertools
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

from alignlab.data.chat import DEFAULT_CHAT_TEMPLATE, prompt_and_full_text, render, split_last_turn
from alignlab.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow
from alignlab.data.tokenize import (
    IGNORE,
    encode,
    tokenize_pair,
    tokenize_prompt,
    tokenize_sft,
    tokenize_unpaired,
    truncation_stats,
)
from alignlab.errors import AlignlabError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["hello world, the world is wide.", "Be terse. See you soon.", "good bad answer question"] * 40


def _bpe(eos_post_processor: bool = False, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    if eos_post_processor:  # a tokenizer that appends EOS itself whenever special tokens are added
        tk.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", tk.token_to_id("<|endoftext|>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])


@pytest.fixture(scope="module")
def tok():
    return _bpe()


def U(t):
    return {"role": "user", "content": t}


def A(t):
    return {"role": "assistant", "content": t}


def S(t):
    return {"role": "system", "content": t}


def trained_spans(tok, ids, labels):
    """Decoded runs of consecutive trained tokens; also checks labels equal ids wherever trained."""
    assert all(lab == IGNORE or lab == i for i, lab in zip(ids, labels))
    runs = itertools.groupby(zip(ids, labels), key=lambda x: x[1] != IGNORE)
    return [tok.decode([i for i, _ in run]) for trained, run in runs if trained]


def test_bpe_merge_across_the_prompt_completion_boundary(tok):
    """'hello wor' + 'ld': the joint text has ' world' as one token, so it belongs to the completion."""
    prompt, completion = "hello wor", "ld"
    assert encode(tok, prompt, True) + encode(tok, completion, False) != encode(tok, prompt + completion, True)
    row = PreferenceRow([U(prompt)], [A(completion)], [A("m")], chat=False)
    t = tokenize_pair(row, tok, None)
    eos = tok.eos_token_id
    assert t.prompt_ids + t.chosen_ids == encode(tok, "hello world", True) + [eos]
    assert t.prompt_ids + t.rejected_ids == encode(tok, "hello worm", True) + [eos]
    assert tok.decode(t.chosen_ids) == " world<|endoftext|>"
    assert tok.decode(t.prompt_ids) == "hello"  # the shared prefix, cut before the merged token


def test_gpt2_bpe_boundary_merge(data_dir, tmp_path):
    src = data_dir / "cs336_fixtures"
    shutil.copy(src / "gpt2_vocab.json", tmp_path / "vocab.json")
    shutil.copy(src / "gpt2_merges.txt", tmp_path / "merges.txt")
    gpt2 = GPT2TokenizerFast.from_pretrained(tmp_path)
    assert len(gpt2) == 50257
    t = tokenize_sft(SFTRow([U("Hello wor"), A("ld")], 1, chat=False), gpt2, None)
    assert t.input_ids == [15496, 995, 50256]  # "Hello", " world", <|endoftext|>
    assert t.labels == [IGNORE, 995, 50256]


@pytest.mark.parametrize("completion", ["ld", "ld<|endoftext|>"])
@pytest.mark.parametrize("auto_eos", [False, True])
def test_eos_appended_exactly_once(completion, auto_eos):
    tk = _bpe(eos_post_processor=auto_eos)
    t = tokenize_sft(SFTRow([U("hello wor"), A(completion)], 1, chat=False), tk, None)
    assert t.input_ids.count(tk.eos_token_id) == 1 and t.input_ids[-1] == tk.eos_token_id
    assert trained_spans(tk, t.input_ids, t.labels) == [" world<|endoftext|>"]


def test_chat_pair_uses_generation_prompt_and_ends_at_end_of_turn(tok):
    assert tok.chat_template is None  # the default ChatML template is used
    row = PreferenceRow([S("Be terse."), U("question")], [A("good answer")], [A("bad answer")])
    t = tokenize_pair(row, tok, None)
    assert tok.decode(t.prompt_ids) == ("<|im_start|>system\nBe terse.<|im_end|>\n"
                                        "<|im_start|>user\nquestion<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(t.chosen_ids) == "good answer<|im_end|>"
    assert tok.decode(t.rejected_ids) == "bad answer<|im_end|>"
    full = encode(tok, render(tok, row.prompt + row.chosen), False)
    assert t.prompt_ids + t.chosen_ids == full[:-1]  # all but the template's "\n" after <|im_end|>


def test_multi_turn_sft_masks_everything_but_trained_assistant_turns(tok):
    msgs = [S("Be terse."), U("hello"), A("hello world"), U("question"), A("See you soon.")]
    t = tokenize_sft(SFTRow(msgs, num_prompt=2), tok, None)
    assert tok.decode(t.input_ids) == render(tok, msgs)
    assert trained_spans(tok, t.input_ids, t.labels) == ["hello world<|im_end|>", "See you soon.<|im_end|>"]
    n_trained = sum(lab != IGNORE for lab in t.labels)
    assert n_trained == len(encode(tok, "hello world<|im_end|>See you soon.<|im_end|>", False))
    # num_prompt past the first answer: only the final assistant turn is trained
    t = tokenize_sft(SFTRow(msgs, num_prompt=4), tok, None)
    assert trained_spans(tok, t.input_ids, t.labels) == ["See you soon.<|im_end|>"]


def test_model_chat_template_without_special_end_marker(tok):
    """A template with plain-text headers: 'Bot:' then ' answer' + EOS; the merge at ':'/' ' is handled."""
    custom = _bpe()
    custom.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
        "{% else %}Bot: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Bot:{% endif %}")
    msgs = [U("hello"), A("good"), U("question"), A("bad answer")]
    t = tokenize_sft(SFTRow(msgs, 1), custom, None)
    assert [s.strip() for s in trained_spans(custom, t.input_ids, t.labels)] == [
        "good<|endoftext|>", "bad answer<|endoftext|>"]
    assert "User" not in "".join(trained_spans(custom, t.input_ids, t.labels))


def test_template_that_drops_assistant_messages_is_a_clean_error():
    from alignlab.errors import AlignlabError

    broken = _bpe()
    broken.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n{% endif %}{% endfor %}"
    with pytest.raises(AlignlabError, match="tokenises to nothing"):
        tokenize_pair(PreferenceRow([U("q")], [A("good")], [A("bad")]), broken, None)
    with pytest.raises(AlignlabError, match="renders to no tokens"):
        tokenize_sft(SFTRow([U("q"), A("good")], 1), broken, None)


def test_template_errors_name_the_row():
    from alignlab.data.rows import Origin
    from alignlab.errors import AlignlabError

    strict = _bpe()
    strict.chat_template = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                            "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{{ m['content'] }}"
                            "{% endfor %}")
    row = SFTRow([U("q"), {"role": "tool", "content": "r"}, A("a")], 1, origin=Origin("f.jsonl", 3, 4))
    with pytest.raises(AlignlabError, match=r"f.jsonl:4 \(record 3\): the chat template cannot render .*'tool'"):
        tokenize_sft(row, strict, None)


def test_truncation_keeps_prompt_end_or_start_and_counts_cuts(tok):
    row = UnpairedRow([U("a " * 30)], [A("b " * 30)], True, chat=False)
    full = tokenize_unpaired(row, tok, None)
    p, c = len(full.prompt_ids), len(full.completion_ids)
    t = tokenize_unpaired(row, tok, 20)
    # prompt over budget 20 // 2 = 10: keep its last 10 tokens; completion gets the other 10
    assert t.prompt_ids == full.prompt_ids[-10:] and t.completion_ids == full.completion_ids[:10]
    assert (t.prompt_cut, t.completion_cut) == (p - 10, c - 10)
    t = tokenize_unpaired(row, tok, 20, max_prompt_length=4, keep_prompt="start")
    assert t.prompt_ids == full.prompt_ids[:4] and t.completion_ids == full.completion_ids[:16]
    # short rows are untouched
    short = tokenize_unpaired(UnpairedRow([U("hi")], [A("yo")], False, chat=False), tok, 20)
    assert (short.prompt_cut, short.completion_cut) == (0, 0)
    assert truncation_stats([t, short]) == {"rows": 2, "prompt_truncated": 1, "completion_truncated": 1,
                                            "prompt_tokens_cut": p - 4, "completion_tokens_cut": c - 16}


def test_pair_truncation_cuts_both_answers_to_the_same_room(tok):
    row = PreferenceRow([U("question " * 3)], [A("good " * 20)], [A("bad")], chat=False)
    t = tokenize_pair(row, tok, 16)
    assert len(t.prompt_ids) + len(t.chosen_ids) == 16 and t.chosen_cut > 0 and t.rejected_cut == 0
    assert t.rejected_ids[-1] == tok.eos_token_id


def test_sft_truncation_keeps_labels_aligned(tok):
    msgs = [U("hello " * 20), A("world " * 20)]
    full = tokenize_sft(SFTRow(msgs, 1), tok, None)
    t = tokenize_sft(SFTRow(msgs, 1), tok, 24)
    assert len(t.input_ids) == 24 and t.prompt_cut > 0 and t.completion_cut > 0
    first = full.labels.index(next(lab for lab in full.labels if lab != IGNORE))
    assert t.input_ids == full.input_ids[first - 12:first] + full.input_ids[first:first + 12]
    assert t.labels == [IGNORE] * 12 + full.labels[first:first + 12]


def test_tokenize_prompt_chat_and_plain(tok):
    ids = tokenize_prompt(PromptRow([U("question")]), tok)
    assert tok.decode(ids) == "<|im_start|>user\nquestion<|im_end|>\n<|im_start|>assistant\n"
    assert tokenize_prompt(PromptRow([U("hello world")], chat=False), tok) == encode(tok, "hello world", True)
    assert tokenize_prompt(PromptRow([U("a " * 10)], chat=False), tok, max_length=3) == \
        encode(tok, "a " * 10, True)[-3:]


def test_plain_prompt_never_ends_with_eos_and_bad_lengths_are_errors(tok):
    from alignlab.errors import AlignlabError

    auto = _bpe(eos_post_processor=True)
    assert tokenize_prompt(PromptRow([U("hello world")], chat=False), auto) == encode(tok, "hello world", False)
    row = UnpairedRow([U("hi")], [A("yo")], True, chat=False)
    with pytest.raises(AlignlabError, match="must be below max_length"):
        tokenize_unpaired(row, tok, 8, max_prompt_length=8)
    with pytest.raises(AlignlabError, match="keep_prompt"):
        tokenize_unpaired(row, tok, 8, keep_prompt="middle")


def test_default_template_text_and_split_last_turn(tok):
    text = tok.apply_chat_template([U("q"), A("a")], tokenize=False, chat_template=DEFAULT_CHAT_TEMPLATE)
    assert text == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    assert split_last_turn([U("q"), A("a1"), A("a2")]) == ([U("q")], [A("a1"), A("a2")])
    assert prompt_and_full_text(tok, [U("q")], [A("a")], chat=True) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n")
    assert prompt_and_full_text(tok, [U("q")], [A("a")], chat=False) == ("q", "qa")


# -- properties over random texts (hypothesis) ----------------------------------------------------

_TOK = _bpe()
TEXT = st.text(alphabet="helowrd ,.abgq\n", min_size=1, max_size=30).filter(lambda s: s.strip())


@settings(max_examples=60, deadline=None)
@given(prompt=TEXT, chosen=TEXT, rejected=TEXT)
def test_joint_tokenisation_reproduces_the_whole_text(prompt, chosen, rejected):
    """For any texts, prompt_ids + X_ids is exactly the tokenisation of prompt + X (+ one EOS)."""
    t = tokenize_pair(PreferenceRow([U(prompt)], [A(chosen)], [A(rejected)], chat=False), _TOK, None)
    eos = _TOK.eos_token_id
    assert t.prompt_ids + t.chosen_ids == encode(_TOK, prompt + chosen, True) + [eos]
    assert t.prompt_ids + t.rejected_ids == encode(_TOK, prompt + rejected, True) + [eos]
    assert len(t.prompt_ids) <= len(encode(_TOK, prompt, True))


@settings(max_examples=40, deadline=None)
@given(system=TEXT, prompt=TEXT, answer=TEXT)
def test_chat_completion_is_the_answer_and_end_of_turn(system, prompt, answer):
    row = PreferenceRow([S(system), U(prompt)], [A(answer)], [A(answer + "x")])
    t = tokenize_pair(row, _TOK, None)
    assert _TOK.decode(t.chosen_ids) == answer + "<|im_end|>"
    full = encode(_TOK, render(_TOK, row.prompt + row.chosen), False)
    tail = full[len(t.prompt_ids) + len(t.chosen_ids):]
    assert full[: len(t.prompt_ids) + len(t.chosen_ids)] == t.prompt_ids + t.chosen_ids
    assert _TOK.decode(tail).strip() == ""


@settings(max_examples=40, deadline=None)
@given(prompt=TEXT, completion=TEXT, max_length=st.integers(4, 24), keep=st.sampled_from(["end", "start"]))
def test_truncation_fits_and_keeps_a_contiguous_prompt_piece(prompt, completion, max_length, keep):
    row = UnpairedRow([U(prompt * 3)], [A(completion * 3)], True, chat=False)
    full = tokenize_unpaired(row, _TOK, None)
    t = tokenize_unpaired(row, _TOK, max_length, keep_prompt=keep)
    assert len(t.prompt_ids) + len(t.completion_ids) <= max_length
    assert len(t.prompt_ids) + t.prompt_cut == len(full.prompt_ids)
    assert len(t.completion_ids) + t.completion_cut == len(full.completion_ids)
    want = full.prompt_ids[t.prompt_cut:] if keep == "end" else full.prompt_ids[: len(t.prompt_ids)]
    assert t.prompt_ids == want and t.completion_ids == full.completion_ids[: len(t.completion_ids)]


# Toy templates with the behaviours of real families (the real ones: tests were run against TRL's copies).
_CHATML_TURN = "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
SYSTEM_MOVES = ("{% for m in messages %}{% if m.role == 'system' %}{% if messages[-1].role == 'user' %}"  # Mistral v0.3
                + _CHATML_TURN + "{% endif %}{% else %}" + _CHATML_TURN + "{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
THINK_LAST = ("{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"  # Qwen3
              "{% if loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% else %}"
              + _CHATML_TURN + "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
THINK_DROPPED = ("{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% if loop.last %}"  # Qwen3
                 "{{ m.content }}{% else %}{{ m.content.split('</think>')[-1].lstrip('\\n') }}{% endif %}<|im_end|>\n"
                 "{% else %}" + _CHATML_TURN + "{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_TOOL_ROLE = ("{% for m in messages %}{% if m.role != 'tool' %}" + _CHATML_TURN + "{% endif %}{% endfor %}"  # Phi-3
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _with_template(template):
    t = _bpe()
    t.chat_template = template
    return t


def test_a_template_that_renders_the_context_otherwise_once_answered_is_refused(tok):
    # Mistral v0.3 moves the system prompt into the last user turn and drops it when an assistant turn ends the
    # conversation: the split trained the user's text as the answer, and the system prompt was nowhere
    t = _with_template(SYSTEM_MOVES)
    row = SFTRow([S("Be terse."), U("hello"), A("world")], num_prompt=2, origin="sys.jsonl:1")
    with pytest.raises(AlignlabError, match="sys.jsonl:1: the chat template renders the context differently"):
        tokenize_sft(row, t, None)
    with pytest.raises(AlignlabError, match="renders the context differently"):
        tokenize_pair(PreferenceRow([S("Be terse."), U("hello")], [A("good")], [A("bad")]), t, None)
    ok = tokenize_sft(SFTRow([U("hello"), A("world")], num_prompt=1), t, None)  # no system turn: no move
    assert trained_spans(t, ok.input_ids, ok.labels) == ["world<|im_end|>"]


def test_earlier_turns_of_a_template_that_writes_the_last_turn_otherwise(tok):
    # Qwen3 writes <think></think> into the last assistant turn only: turn 1 rendered as the last turn is no
    # prefix of the conversation, and its span came out empty ("renders to no tokens")
    t = _with_template(THINK_LAST)
    row = SFTRow([U("hello"), A("world"), U("see you"), A("soon")], num_prompt=1)
    ex = tokenize_sft(row, t, None)
    assert trained_spans(t, ex.input_ids, ex.labels) == ["world<|im_end|>", "<think>\n\n</think>\n\nsoon<|im_end|>"]
    # and drops an earlier turn's reasoning: that turn trains on what the template shows (it was refused)
    t = _with_template(THINK_DROPPED)
    row = SFTRow([U("hello"), A("<think>\nhmm\n</think>\n\nworld"), U("see you"), A("<think>\nok\n</think>\n\nsoon")], 1)
    ex = tokenize_sft(row, t, None)
    assert trained_spans(t, ex.input_ids, ex.labels) == ["world<|im_end|>", "<think>\nok\n</think>\n\nsoon<|im_end|>"]


def test_templates_that_drop_tool_replies_are_refused_and_named_templates_work(tok):
    # Phi-3's template has no tool role: the tool's result vanished from what the model was trained / sampled on
    t = _with_template(NO_TOOL_ROLE)
    msgs = [U("hello"), A("call"), {"role": "tool", "content": "RESULT=42"}, A("world")]
    with pytest.raises(AlignlabError, match="leaves out tool messages"):
        tokenize_sft(SFTRow(msgs, num_prompt=1), t, None)
    # a tokenizer with named templates (Hermes 3, Command-R) renders with its "default" one
    named = _with_template({"default": DEFAULT_CHAT_TEMPLATE, "tool_use": NO_TOOL_ROLE})
    assert render(named, [U("hello")], True) == render(_with_template(DEFAULT_CHAT_TEMPLATE), [U("hello")], True)


def test_escaped_tool_replies_and_generation_prompts_with_text_of_their_own(tok):
    # the checks above must not refuse real templates: Llama 3.x writes a tool reply as `content | tojson` (escaped,
    # so the raw text is not in the render), DeepSeek-R1 opens its generation prompt with "<think>\n", which the
    # rendered answer turn does not hold
    escaped = ("{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>tool\n{{ m.content | tojson }}<|im_end|>\n"
               "{% else %}" + _CHATML_TURN + "{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    t = _with_template(escaped)
    msgs = [U("hello"), A("call"), {"role": "tool", "content": 'RESULT "42"\nok'}, A("world")]
    ex = tokenize_sft(SFTRow(msgs, num_prompt=1), t, None)
    assert trained_spans(t, ex.input_ids, ex.labels) == ["call<|im_end|>", "world<|im_end|>"]
    thinks = ("{% for m in messages %}" + _CHATML_TURN + "{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    t = _with_template(thinks)
    ex = tokenize_sft(SFTRow([U("hello"), A("world"), U("see you"), A("soon")], num_prompt=1), t, None)
    assert trained_spans(t, ex.input_ids, ex.labels) == ["world<|im_end|>", "soon<|im_end|>"]
    pair = tokenize_pair(PreferenceRow([U("hello")], [A("good")], [A("bad")]), t, None)
    assert t.decode(pair.chosen_ids) == "good<|im_end|>" and t.decode(pair.rejected_ids) == "bad<|im_end|>"


LLAMA3_LIKE = ("{% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content + "
               "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
               "\n\n{% endif %}")


def test_template_markers_the_tokenizer_splits_are_cut_at_their_characters():
    # Llama 3's markers are no tokens of this tokenizer: "<|eot_id|>"'s "|>" merges with the next header's "<|" into
    # one token, which a render ending at the turn does not have. Comparing that render's ids with the whole text's
    # left the first turn's closing "|>" untrained (on SmolLM2's tokenizer the header's "\n\n", one token alone and
    # two before a word, was trained as well).
    t = _bpe(corpus=CORPUS + ["<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhello world"] * 40)
    t.chat_template = LLAMA3_LIKE
    assert t.decode(encode(t, render(t, [U("hello"), A("world")]), False)[-1:]) == "|>"  # the premise
    msgs = [U("hello"), A("world"), U("see you"), A("soon")]
    ex = tokenize_sft(SFTRow(msgs, num_prompt=1), t, None)
    assert t.decode(ex.input_ids) == render(t, msgs)
    assert [s.strip() for s in trained_spans(t, ex.input_ids, ex.labels)] == ["world<|eot_id|><|", "soon<|eot_id|>"]
    pair = tokenize_pair(PreferenceRow([U("hello")], [A("good answer")], [A("bad answer")]), t, None)
    assert t.decode(pair.chosen_ids).strip() == "good answer<|eot_id|>"
    assert pair.prompt_ids + pair.chosen_ids == encode(t, render(t, [U("hello"), A("good answer")]), False)


def test_llamafactory_v1_loss_weight_zero_keeps_an_assistant_turn_as_context(tmp_path):
    # the weight was dropped: a 0-weighted answer ("not to be learned") was trained
    import json

    from alignlab.data.sources import load_rows

    def turn(role, text, w):
        return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": w}

    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps({"messages": [turn("user", "hello", 0.0), turn("assistant", "bad answer", 0.0),
                                             turn("user", "question", 0.0), turn("assistant", "good answer", 1.0)]}))
    t = _bpe()
    row = load_rows(str(path), task="sft").rows[0]
    ex = tokenize_sft(row, t, None)
    assert trained_spans(t, ex.input_ids, ex.labels) == ["good answer<|im_end|>"]
    for bad, what in ((turn("user", "hello", 1.0), "only assistant turns train"), (turn("assistant", "a", 0.5),
                                                                                    "0 or 1 are supported")):
        path.write_text(json.dumps({"messages": [bad, turn("assistant", "b", 1.0)]}))
        with pytest.raises(AlignlabError, match=what):
            load_rows(str(path), task="sft")


def test_a_tokenizer_that_trims_offsets_keeps_an_answers_leading_whitespace():
    # trimmed offsets leave whitespace outside every span: "\n    " left the answer for the prompt
    t = _bpe()
    t.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    assert any(b <= a for a, b in t("hello\n    world", return_offsets_mapping=True)["offset_mapping"])  # premise
    ex = tokenize_sft(SFTRow([U("hello\n"), A("    world")], 1, chat=False), t, None)
    assert "    world<|endoftext|>" in trained_spans(t, ex.input_ids, ex.labels)[0]
    assert ex.input_ids == encode(t, "hello\n    world", True) + [t.eos_token_id]


def test_truncation_drops_the_template_tail_before_any_prompt_token(tok):
    """The template's "\\n" after the last <|im_end|> trains nothing, but counted as completion it made truncation cut
    prompt tokens (14 of a 36-token SmolLM2 chat at max_length 35) and keep the "\\n"."""
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    row = SFTRow([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello world"},
                  {"role": "assistant", "content": "good answer"}], 2, chat=True)
    full = tokenize_sft(row, tok, None)
    trained_end = max(i for i, lab in enumerate(full.labels) if lab != -100) + 1
    assert trained_end < len(full.input_ids)  # the template's tail, untrained
    cut = tokenize_sft(row, tok, trained_end)
    assert (cut.prompt_cut, cut.completion_cut) == (0, 0)
    assert cut.input_ids == full.input_ids[:trained_end] and cut.labels == full.labels[:trained_end]


def test_a_spelt_out_end_of_turn_marker_is_said_at_load(capsys):
    """Without an <|im_end|> token the default template spells it out: training writes the marker, generation
    stops at EOS only and ran on to max_new_tokens, while the docstring said it generated correctly."""
    from alignlab.models.tokenizer import ensure_chat_ready

    plain = GPT2TokenizerFast(tokenizer_object=_bpe_without_markers(), eos_token="<|endoftext|>")
    ensure_chat_ready(plain)
    assert "no <|im_end|> token" in capsys.readouterr().err
    ensure_chat_ready(_bpe())  # has the markers (and a template once applied): nothing said
    assert "im_end" not in capsys.readouterr().err


def _bpe_without_markers() -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk
