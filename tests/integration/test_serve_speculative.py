"""`alignlab serve --speculative medusa=DIR` over loopback HTTP on tiny-random: greedy answers equal plain
greedy decoding (whole and streamed, while a batched request decodes alongside), seeded sampling repeats,
typical acceptance that accepts nothing answers as the continuous batcher samples, requests the heads do not
serve (n > 1) go through the batcher, and the CLI's flag checks."""

import json
import threading
import urllib.request

import pytest
import torch

from alignlab.cli import main
from alignlab.rollout.generate import SamplingConfig, generate
from alignlab.rollout.speculative import MedusaDecoding
from alignlab.serve import ModelServer, base_url, make_http_server

PROMPTS = ["The film was", "I think that this", "once upon a time"]


@pytest.fixture(scope="module")
def tiny():
    from alignlab.models.load import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model("tiny-random"), load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def heads(tiny, tmp_path_factory):
    """Perturbed heads (most top-1 guesses wrong, so lower-ranked tree nodes get accepted), saved as
    `alignlab medusa` saves them and loaded back as the server loads them."""
    from alignlab.models.medusa import MedusaModel, load_medusa

    base, _ = tiny
    m = MedusaModel.create(base, num_heads=3, base_name="tiny-random")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for blk in m.heads.blocks:
            blk[0].linear.weight.copy_(torch.randn(blk[0].linear.weight.shape, generator=g) * 0.5)
    out = tmp_path_factory.mktemp("heads")
    m.save_pretrained(str(out))
    return load_medusa(out, base)


def _serve(tiny, heads, decoding):
    server = ModelServer(*tiny, model_id="tiny-random", max_tokens_limit=200, speculative=(heads, decoding))
    httpd = make_http_server(server, "127.0.0.1", 0, socket_timeout=30.0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server, httpd


@pytest.fixture(scope="module")
def served(tiny, heads):
    server, httpd = _serve(tiny, heads, MedusaDecoding(tree_top_k=6, tree_nodes=40))
    yield server, base_url(httpd)
    httpd.shutdown()
    httpd.server_close()
    server.close()


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = resp.read()
    if body.get("stream"):
        return [json.loads(line[6:]) for line in data.decode().splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"]
    return json.loads(data)


def _ids(tok, text):
    return tok(text).input_ids


def test_greedy_requests_equal_plain_greedy_alongside_a_batched_request(served, tiny):
    model, tok = tiny
    server, url = served
    forwards, steps = server.speculative.stats.forwards, server.engine.steps
    ref = generate(model, tok, [_ids(tok, p) for p in PROMPTS], SamplingConfig(greedy=True, max_new_tokens=30))
    batched: dict = {}

    def side():  # n = 2: not the heads' (batch 1) kind of request: through the continuous batcher
        batched["out"] = post(url + "/completions", {"prompt": [_ids(tok, PROMPTS[0])], "n": 2, "max_tokens": 30,
                                                     "temperature": 0, "return_token_ids": True})

    t = threading.Thread(target=side)
    t.start()
    for p, s in zip(PROMPTS, ref.samples):
        out = post(url + "/completions", {"prompt": [_ids(tok, p)], "max_tokens": 30, "temperature": 0,
                                          "return_token_ids": True})
        assert out["choices"][0]["token_ids"] == s.completion_ids and out["choices"][0]["text"] == s.text
        assert out["usage"]["completion_tokens"] == len(s.completion_ids)
    t.join()
    assert [c["token_ids"] for c in batched["out"]["choices"]] == [ref.samples[0].completion_ids] * 2
    assert server.speculative.stats.forwards > forwards and server.engine.steps > steps
    assert server.speculative.stats.mean_accepted_length > 1.0


def test_streamed_chat_equals_the_whole_answer(served, tiny):
    model, tok = tiny
    _, url = served
    chat = [{"role": "user", "content": "Say something."}]
    whole = post(url + "/chat/completions", {"messages": chat, "max_tokens": 25, "temperature": 0})
    chunks = post(url + "/chat/completions", {"messages": chat, "max_tokens": 25, "temperature": 0, "stream": True})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    ref = generate(model, tok, [chat], SamplingConfig(greedy=True, max_new_tokens=25)).samples[0]
    assert whole["choices"][0]["message"]["content"] == text == ref.text


def test_seeded_sampling_repeats(served, tiny):
    _, tok = tiny
    _, url = served
    body = {"prompt": [_ids(tok, PROMPTS[1])], "max_tokens": 20, "temperature": 0.8, "seed": 4,
            "return_token_ids": True}
    a, b = post(url + "/completions", body), post(url + "/completions", body)
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]
    assert 1 <= len(a["choices"][0]["token_ids"]) <= 20


def test_nothing_accepted_answers_as_the_batcher_samples(tiny, heads):
    """typical_epsilon = typical_delta = inf: every step emits the root, drawn from the request's own
    generator as the continuous batcher draws it: the same sample as generate() with that seed."""
    model, tok = tiny
    server, httpd = _serve(tiny, heads, MedusaDecoding(typical_epsilon=float("inf"), typical_delta=float("inf")))
    try:
        url = base_url(httpd)
        for seed, first in ((9, None), (3, 5)):
            body = {"prompt": [_ids(tok, PROMPTS[2])], "max_tokens": 16, "temperature": 0.9, "top_p": 0.95,
                    "seed": seed, "return_token_ids": True}
            if first is not None:
                body["alignlab_first_prompt"] = first
            out = post(url + "/completions", body)
            ref = generate(model, tok, [_ids(tok, PROMPTS[2])], SamplingConfig(
                max_new_tokens=16, temperature=0.9, top_p=0.95, seed=seed, per_row_seed=first is not None,
                first_prompt=first or 0)).samples[0]
            assert out["choices"][0]["token_ids"] == ref.completion_ids
        assert server.speculative.stats.forwards > 0 and server.speculative.stats.accepted[1:] == [0, 0, 0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.close()


def test_serve_cli_checks_the_speculative_flags():
    assert main(["serve", "tiny-random", "--port", "0", "--tree-nodes", "4"]) == 2
    assert main(["serve", "tiny-random", "--port", "0", "--speculative", "eagle=x"]) == 2
    assert main(["serve", "tiny-random", "--port", "0", "--speculative", "medusa=/x", "--tree-top-k", "0"]) == 2


def test_serve_cli_refuses_limits_that_would_refuse_every_request(capsys):
    # --max-connections 0, --timeout -5, --max-tokens-limit 0 and --max-body-bytes -1 each started a server that
    # answered nothing (broken pipes, closed connections, 400 or 413 for every request)
    for flag, value in (("--max-connections", "0"), ("--timeout", "-5"), ("--max-tokens-limit", "0"),
                        ("--max-body-bytes", "-1"), ("--max-n", "0")):
        assert main(["serve", "tiny-random", "--port", "0", flag, value]) == 2
        assert f"{flag} {value}" in capsys.readouterr().err


def test_a_grpo_group_of_32_fits_the_default_n_limit():
    # n was capped at 16 with no flag to raise it: GRPO with num_generations 32 through `alignlab serve` failed
    # at its first rollout (HTTP 400)
    from alignlab.eval.commands import _serve_args
    from alignlab.serve.protocol import parse_job

    p = __import__("argparse").ArgumentParser()
    _serve_args(p)
    assert p.parse_args(["m"]).max_n == 64 and p.parse_args(["m", "--max-n", "128"]).max_n == 128
    assert parse_job({"prompt": "x", "n": 32}, False, default_max=4, max_tokens_limit=8, max_n=64).n == 32
