"""`alignlab chat MODEL`: a quick interactive check of a model, one user message per input line.

Reads lines from stdin (a terminal, or a pipe: `printf 'hi\\nand then?\\n' | alignlab chat runs/dpo`), keeps the
conversation, renders it with the model's chat template (or `--chat-template FILE`) and prints each reply on
its own line(s). `/reset` starts a new conversation, `/exit` (or end of input) stops. Replies are sampled by
the same engine as `alignlab generate` (`rollout.generate`); the oldest turns are dropped when the
conversation no longer fits the model's context.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from alignlab.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model alias (tiny-random, smollm2-135m-instruct), local HF dir, adapter dir or hub id")
    p.add_argument("--system", metavar="TEXT", help="system message opening every conversation")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template replacing the model's own")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same input, same reply)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")


def _fit(tokenizer: Any, messages: list[dict], budget: int) -> list[dict]:
    """Drop the oldest user/assistant turns (never the system message or the newest turn) until the rendered
    conversation leaves `budget` tokens of context for the reply."""
    from alignlab.rollout.encode import encode_prompt

    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head):]
    while len(turns) > 1 and len(encode_prompt(tokenizer, head + turns)) > budget:
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return head + turns


def chat_loop(model: Any, tokenizer: Any, lines: Iterable[str], out: TextIO, sampling: Any, *,
              system: str | None = None, context: int | None = None, prompt: str = "") -> int:
    """Answer each input line as the next user message; returns the number of replies printed."""
    from alignlab.rollout.generate import generate

    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    replies = 0
    if prompt:
        out.write(prompt)
        out.flush()
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = list(start)
        elif text.strip():
            messages.append({"role": "user", "content": text})
            if context:
                messages = _fit(tokenizer, messages, context - sampling.max_new_tokens)
            reply = generate(model, tokenizer, [messages], sampling).samples[0].text.strip()
            messages.append({"role": "assistant", "content": reply})
            out.write(reply + "\n")
            replies += 1
        if prompt:
            out.write(prompt)
        out.flush()
    return replies


@command("chat", "Talk to a model: each stdin line is a user message, each reply is printed (/reset, /exit).", _args)
def _chat(args: argparse.Namespace) -> int:
    from alignlab.models.load import load_model, load_tokenizer, resolve_device
    from alignlab.models.tokenizer import use_chat_template
    from alignlab.rollout.generate import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              greedy=args.greedy, seed=args.seed, batch_size=1)
    sampling.validate()
    tokenizer = use_chat_template(load_tokenizer(args.model), args.chat_template)
    model = load_model(args.model, device=resolve_device(args.device)).eval()
    context = getattr(model.config, "max_position_embeddings", None)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}; /reset starts over, /exit or Ctrl-D ends", file=sys.stderr)
    chat_loop(model, tokenizer, sys.stdin, sys.stdout, sampling, system=args.system, context=context,
              prompt="> " if interactive else "")
    return 0
