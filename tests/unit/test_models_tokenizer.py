"""Default chat template, byte-level BPE training and ensure_chat_ready."""

import pytest
from transformers import PreTrainedTokenizerFast

from alignlab.models.tokenizer import (
    DEFAULT_CHAT_TEMPLATE,
    builtin_corpus,
    ensure_chat_ready,
    train_bpe_tokenizer,
)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(builtin_corpus(), 512)


def test_bpe_vocab_and_specials(tok):
    """256 bytes + 4 specials + 252 merges = 512; specials take ids 0..3 in the order given."""
    assert len(tok) == 512
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [0, 1, 2, 3]
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|pad|>", None)
    # special tokens stay single ids inside text; the word between them is ordinary BPE
    ids = tok.encode("<|im_start|>user<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids[1:-1]) == "user" and min(ids[1:-1]) >= 4


@pytest.mark.parametrize(
    "text",
    ["The model reads the question.", "  two  spaces\n\ttab", "naïve café ☕ 東京 🤖", "x = 12 * 4  # 48\n", ""],
)
def test_round_trip(tok, text):
    """Byte-level BPE has no unknown symbols: every string decodes back to itself exactly."""
    ids = tok.encode(text)
    assert tok.decode(ids) == text


def test_training_is_deterministic(tok):
    again = train_bpe_tokenizer(builtin_corpus(), 512)
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_merges_compress_the_corpus(tok):
    """Learnt merges make common English shorter than its byte count."""
    text = "The student reads a short story with great care."
    assert len(tok.encode(text)) < len(text.encode()) / 2


def test_chat_template_renders_chatml(tok):
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == expected
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_assistant_spans_are_findable(tok):
    """Each assistant message renders as `<|im_start|>assistant\\n{content}<|im_end|>\\n`, and the
    generation marks give exactly content + <|im_end|> for both assistant turns."""
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    for m in MESSAGES:
        if m["role"] == "assistant":
            assert f"<|im_start|>assistant\n{m['content']}<|im_end|>\n" in text
    out = tok.apply_chat_template(MESSAGES, return_assistant_tokens_mask=True, return_dict=True)
    trained = [i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tok.decode(trained) == "Hello!<|im_end|>4<|im_end|>"


def test_tool_role_renders_unknown_role_is_rejected(tok):
    text = tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    assert text == "<|im_start|>tool\nx<|im_end|>\n"
    with pytest.raises(Exception, match="unknown chat role: robot"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_ensure_chat_ready_fills_pad_and_template(tok):
    bare = train_bpe_tokenizer(["abc abd"] * 5, 270, pad_token="<|endoftext|>", chat_template=None)
    bare.pad_token = None
    assert bare.pad_token is None and not bare.chat_template
    same = ensure_chat_ready(bare)
    assert same is bare
    assert bare.pad_token == bare.eos_token == "<|im_end|>"
    assert bare.chat_template == DEFAULT_CHAT_TEMPLATE
    # an existing template and pad are left alone
    tok.chat_template = "{{ messages[0]['content'] }}"
    try:
        ensure_chat_ready(tok)
        assert tok.chat_template == "{{ messages[0]['content'] }}" and tok.pad_token == "<|pad|>"
    finally:
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
