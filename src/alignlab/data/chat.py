"""Chat templates: render message lists to text, with a documented default for tokenizers without one.

`DEFAULT_CHAT_TEMPLATE` (defined in alignlab.models.tokenizer, the one copy) is ChatML, the layout SmolLM2, Qwen and many others use:

    <|im_start|>system\\nYou are terse.<|im_end|>\\n
    <|im_start|>user\\nHi<|im_end|>\\n
    <|im_start|>assistant\\nHello!<|im_end|>\\n

A generation prompt is `<|im_start|>assistant\\n`. The end-of-turn marker `<|im_end|>` should be a
single special token of the tokenizer (add it with `tok.add_special_tokens(...)` and resize the model's
embeddings when it is not) so the model can learn to stop: spelt out in ordinary tokens it trains, but
generation stops at EOS only unless "<|im_end|>" is a stop string.
No system turn is invented when the conversation has none.
"""

from __future__ import annotations

import json
from typing import Any

from alignlab.data.rows import Message, text_of
from alignlab.errors import AlignlabError
from alignlab.models.tokenizer import DEFAULT_CHAT_TEMPLATE

END_OF_TURN = "<|im_end|>"


def ensure_chat_template(tok: Any) -> Any:
    """Give `tok` the default template when it has none (in place); returns `tok`."""
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def render(tok: Any, messages: list[Message], add_generation_prompt: bool = False, where: Any = None) -> str:
    """The tokenizer's chat template (or the default) applied to `messages`, as text; `where` (a row's
    origin) goes into the error message."""
    template = getattr(tok, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    if isinstance(template, dict):  # named templates (Hermes 3, Command-R): {"default": ..., "tool_use": ...}
        template = template.get("default") or next(iter(template.values()))
    roles = [m["role"] for m in messages]
    at = f"{where}: " if where is not None else ""
    try:
        text = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
        )
    except Exception as e:  # jinja raises TemplateError (or whatever the template's raise_exception says)
        raise AlignlabError(f"{at}the chat template cannot render a conversation with roles {roles}: {e}") from None
    text = text if isinstance(text, str) else "".join(text)
    def kept(content: str) -> bool:  # as written, or as Llama 3.x writes it (`content | tojson`: escaped)
        return content in text or json.dumps(content, ensure_ascii=False)[1:-1] in text

    dropped = [m for m in messages if m["role"] == "tool" and not kept(m["content"].strip())]
    if dropped:  # Phi-3's template has no tool role: the tool's reply vanished from the text the model saw
        raise AlignlabError(f"{at}the chat template leaves out tool messages (roles {roles}); use a template with a "
                            "tool role (chat_template=FILE)")
    return text


def split_last_turn(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """Conversation -> (prompt, completion): the completion is the final run of assistant messages."""
    cut = len(messages)
    while cut and messages[cut - 1]["role"] == "assistant":
        cut -= 1
    return messages[:cut], messages[cut:]


def prompt_and_full_text(
    tok: Any, prompt: list[Message], completion: list[Message], chat: bool, where: Any = None
) -> tuple[str, str]:
    """(prompt text, prompt+completion text): with the template and the generation prompt on the prompt
    side for chat data, or the plain concatenation for text data."""
    if not chat:
        p = text_of(prompt)
        return p, p + text_of(completion)
    return render(tok, prompt, True, where), render(tok, prompt + completion, False, where)
