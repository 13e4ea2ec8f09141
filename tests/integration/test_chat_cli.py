"""Issue 15 item 11: `alignlab chat MODEL` reads user lines from stdin and prints one reply per line, keeping
the conversation (each reply is what the sampling engine gives for the whole history), /reset starts over."""

import io
import sys

from alignlab.cli import main

ARGS = ["chat", "tiny-random", "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "8", "--seed", "0"]


def test_piped_lines_get_replies_that_follow_the_conversation(monkeypatch, capsys):
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.generate import SamplingConfig, generate

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nand then?\n/reset\nand then?\n/exit\nnever read\n"))
    assert main(ARGS) == 0
    printed = capsys.readouterr().out

    tok, model = load_tokenizer("tiny-random"), load_model("tiny-random").eval()
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0, batch_size=1)

    def reply(messages):
        return generate(model, tok, [messages], cfg).samples[0].text.strip()

    first = reply([{"role": "user", "content": "hello there"}])
    second = reply([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "and then?"}])
    fresh = reply([{"role": "user", "content": "and then?"}])
    assert printed == f"{first}\n{second}\n{fresh}\n"
    assert first and second != first  # tiny-random samples real tokens at temperature 1
