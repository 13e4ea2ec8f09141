"""Tokenizers: the default chat template, byte-level BPE training, and making any tokenizer chat-ready.

The default template is plain ChatML (the format SmolLM2, Qwen and many open models use), so a model
fine-tuned with alignlab's default speaks the same turn format as the most common instruct models.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `alignlab --help` instant: transformers is imported inside functions
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"

# ChatML. Each message renders as `<|im_start|>{role}\n{content}<|im_end|>\n`; in particular every
# assistant message is exactly `<|im_start|>assistant\n{content}<|im_end|>\n`, so the data layer can find
# assistant spans by rendering and matching. With add_generation_prompt the text ends in
# `<|im_start|>assistant\n`, where the model's answer starts. The {% generation %} block marks the trained
# part of an assistant turn (content + <|im_end|>) for transformers' `return_assistant_tokens_mask`.
# Tool results (role `tool`, from ShareGPT observation turns) render like user turns; any other role is
# rejected rather than rendered silently.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unknown chat role: ' + message['role'] + ' (expected system, user, assistant or tool)') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, PAD)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    *,
    eos_token: str = IM_END,
    pad_token: str = PAD,
    bos_token: str | None = None,
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style: every byte is in the alphabet, so no text is unknown).

    `vocab_size` counts the 256 byte symbols, the special tokens and the learnt merges. The special tokens
    get the first ids in the order given. Training is deterministic: the same texts give the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(special_tokens)
    for tok in (eos_token, pad_token, bos_token):
        if tok is not None and tok not in specials:
            specials.append(tok)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact (the leading space stays in its token's span)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos_token,
        pad_token=pad_token,
        bos_token=bos_token,
        unk_token=None,
        chat_template=chat_template,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def ensure_chat_ready(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give `tokenizer` a pad token (its EOS when it has none) and a chat template (the default ChatML).

    Padding with EOS is safe because padded positions are masked out of attention and labels. The
    default template's `<|im_start|>`/`<|im_end|>` markers are only single tokens if the vocabulary has
    them; otherwise they are spelt out in ordinary tokens: training learns to write the marker, but generation
    stops at EOS only, so a reply runs on past it to max_new_tokens unless "<|im_end|>" is a stop string (printed
    when the template is applied). Returns the same object, changed in place.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            from alignlab.errors import AlignlabError

            raise AlignlabError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token; cannot pad batches"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        if "<|im_end|>" not in tokenizer.get_vocab():
            import sys

            print(f"tokenizer {tokenizer.name_or_path!r}: no <|im_end|> token, so the default chat template spells "
                  "it out; a chat model trained on it stops at EOS only: give '<|im_end|>' as a stop string (or add "
                  "the markers as special tokens and resize the embeddings)", file=sys.stderr, flush=True)
    return tokenizer


def use_chat_template(tokenizer: PreTrainedTokenizerBase, path: str | None) -> PreTrainedTokenizerBase:
    """Replace `tokenizer`'s chat template by the Jinja text in file `path` (the `chat_template` config key);
    None keeps it. The template must render a system/user/assistant conversation, with and without the
    generation prompt, and the assistant's text must appear in it (the data layer finds the trained span
    there); otherwise an AlignlabError names the file. The trained model's saved tokenizer carries it."""
    if not path:
        return tokenizer
    from pathlib import Path

    from alignlab.errors import AlignlabError

    file = Path(path)
    try:
        template = file.read_text(encoding="utf-8")
    except OSError as e:
        raise AlignlabError(f"chat_template: cannot read {file}: {e.strerror or e}") from None
    probe = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U2"},
             {"role": "assistant", "content": "A3"}]
    try:
        full = tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
        prompt = tokenizer.apply_chat_template(probe[:2], chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
    except Exception as e:  # jinja2 syntax or runtime errors, raise_exception in the template
        raise AlignlabError(f"chat_template: {file} does not render a system/user/assistant chat: {e}") from None
    if "A3" not in full or "U2" not in prompt:
        raise AlignlabError(f"chat_template: {file} drops message contents (rendered {full[:200]!r})")
    tokenizer.chat_template = template
    return tokenizer


# --- a small built-in English corpus, so the tiny model's tokenizer needs no data files -----------------

_SUBJECTS = (
    "the model", "a student", "the teacher", "my friend", "the small cat", "an old farmer", "the river",
    "the computer", "our team", "the assistant", "a curious child", "the scientist", "the city",
)
_VERBS = (
    "reads", "writes", "learns", "answers", "explains", "finds", "builds", "helps", "follows", "remembers",
    "counts", "describes", "improves", "watches", "plans",
)
_OBJECTS = (
    "a short story", "the question", "every answer", "the old map", "a simple plan", "the numbers",
    "a new language", "the weather", "the results", "a kind letter", "the garden", "the long road",
)
_TAILS = (
    "before the sun goes down.", "with great care.", "because it matters.", "in the quiet morning.",
    "and then rests.", "while the rain falls.", "for the first time.", "without any help.",
    "at the end of the day.", "so that everyone can learn.",
)
_QUESTIONS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
    ("Write a haiku about rain.", "Soft rain on the roof,\nquiet streets shine in grey light,\nthe day breathes slowly."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("What is 12 * 4?", "12 * 4 = 48. #### 48"),
)


def builtin_corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """A few KB of varied English (sentences, numbers, punctuation, code-ish text and ChatML dialogues),
    generated from a fixed seed so the tokenizer trained on it is identical on every machine."""
    rng = random.Random(seed)
    texts = []
    for i in range(n_sentences):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        texts.append(s[0].upper() + s[1:])
        if i % 10 == 0:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            texts.append(f"Question: what is {a} + {b}? Answer: {a + b}. #### {a + b}")
        if i % 25 == 0:
            texts.append(f"def add(x, y):\n    return x + y  # {i}\n")
    for q, a in _QUESTIONS:
        texts.append(f"{IM_START}user\n{q}{IM_END}\n{IM_START}assistant\n{a}{IM_END}\n")
    return texts
