"""`alignlab serve` on a loopback port with tiny models: the OpenAI protocol, 4xx / 413 answers, a stalled
client that does not block others, and the LLM judge end to end (both orders seen by the server, replies
parsed, malformed replies counted)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from alignlab.eval.backends import OpenAIBackend
from alignlab.eval.judges import LLMJudge
from alignlab.eval.pairwise import compare_answers
from alignlab.serve import ModelServer, base_url, make_http_server

HOST = "127.0.0.1"


def _start(server: ModelServer, socket_timeout: float = 5.0):
    httpd = make_http_server(server, HOST, 0, socket_timeout=socket_timeout, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def tiny():
    from alignlab.models.load import load_model, load_tokenizer

    return load_model("tiny-random"), load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def served(tiny):
    server = ModelServer(*tiny, model_id="tiny-random", max_body_bytes=4096, max_tokens_limit=64, record=500)
    httpd = _start(server, socket_timeout=30.0)
    yield server, base_url(httpd)
    httpd.shutdown()
    httpd.server_close()


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


CHAT = [{"role": "user", "content": "Say something."}]


def test_chat_completion_protocol_and_usage(served, tiny):
    from alignlab.rollout.encode import encode_prompt

    server, url = served
    status, out = post(url + "/chat/completions", {"model": "tiny-random", "messages": CHAT, "max_tokens": 5,
                                                  "temperature": 0, "n": 2, "unknown_field": {"ignored": 1}})
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == "tiny-random"
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"] == out["choices"][1]["message"]  # greedy: both samples equal
    prompt_tokens = len(encode_prompt(tiny[1], CHAT))
    usage = out["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert 2 <= usage["completion_tokens"] <= 10 and usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
    for c in out["choices"]:
        assert c["finish_reason"] in ("stop", "length")


def test_completions_seed_stop_and_n(served):
    _, url = served
    body = {"prompt": ["The cat", "A dog"], "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 7, "n": 2}
    s1, a = post(url + "/completions", body)
    s2, b = post(url + "/completions", body)
    assert s1 == s2 == 200 and a["object"] == "text_completion"
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]  # same seed, same text
    assert [c["index"] for c in a["choices"]] == [0, 1, 2, 3]
    assert a["usage"]["completion_tokens"] <= 4 * 6
    status, out = post(url + "/completions", {"prompt": "The cat", "max_tokens": 30, "seed": 1, "stop": [" "]})
    assert status == 200
    choice = out["choices"][0]
    assert " " not in choice["text"] or choice["finish_reason"] == "length"


@pytest.mark.parametrize("body, param, code", [
    ({}, "messages", "missing_required_parameter"),
    ({"messages": "hi"}, "messages", "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"messages": CHAT, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"messages": CHAT, "temperature": 3}, "temperature", "invalid_value"),
    ({"messages": CHAT, "top_p": 0}, "top_p", "invalid_value"),
    ({"messages": CHAT, "max_tokens": True}, "max_tokens", "invalid_type"),
    ({"messages": CHAT, "max_tokens": 10_000}, "max_tokens", "invalid_value"),
    ({"messages": CHAT, "n": 0}, "n", "invalid_value"),
    ({"messages": CHAT, "stop": 3}, "stop", "invalid_type"),
    ({"messages": CHAT, "seed": 1.5}, "seed", "invalid_type"),
    ({"messages": CHAT, "stream": "yes"}, "stream", "invalid_type"),
    ({"messages": CHAT, "presence_penalty": 0.5}, "presence_penalty", "unsupported"),
    ({"messages": CHAT, "logit_bias": {"5": 10}}, "logit_bias", "unsupported"),
    ({"messages": CHAT, "min_tokens": 10}, "min_tokens", "unsupported"),  # vLLM's: a 200 that ignored them
    ({"messages": CHAT, "stop_token_ids": [44]}, "stop_token_ids", "unsupported"),
    ({"messages": CHAT, "min_p": 1.0}, "min_p", "unsupported"),
    ({"messages": CHAT, "n": 1, "best_of": 3}, "best_of", "unsupported"),
    ({"messages": CHAT, "response_format": {"type": "json_object"}}, "response_format", "unsupported"),
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"messages": CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
])
def test_bad_chat_requests_get_400_in_openai_shape(served, body, param, code):
    _, url = served
    status, out = post(url + "/chat/completions", body)
    assert status == 400
    assert out["error"]["type"] == "invalid_request_error"
    assert out["error"]["param"] == param and out["error"]["code"] == code


def test_other_4xx(served):
    server, url = served
    assert post(url + "/chat/completions", None, raw=b"{not json")[0] == 400
    assert post(url + "/chat/completions", None, raw=b"[1, 2]")[1]["error"]["code"] == "invalid_json"
    assert post(url + "/chat/completions", None, raw=b"\xff\xfe")[0] == 400
    assert post(url + "/completions", {"prompt": 5})[1]["error"]["param"] == "prompt"
    status, out = post(url + "/completions", {"prompt": [[1, 2], [3, 10**9]], "max_tokens": 2})
    assert status == 400 and "outside the vocabulary" in out["error"]["message"]
    assert post(url + "/nowhere", {})[0] == 404
    status, out = post(url + "/completions", {"prompt": "word " * 700, "max_tokens": 8})  # ~2100 tokens > 1024
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"
    with urllib.request.urlopen(url + "/models", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny-random"
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"


def _raw(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversize_bodies_get_413_without_being_read(served):
    _, url = served
    status, out = post(url + "/chat/completions", {"messages": CHAT, "padding": "x" * 10_000})
    assert status == 413 and out["error"]["code"] == "request_too_large"
    # A client announcing a gigabyte gets its answer at once, from the header alone.
    t0 = time.perf_counter()
    reply = _raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{")
    assert reply.startswith(b"HTTP/1.0 413") and time.perf_counter() - t0 < 5
    reply = _raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 411")


def test_a_stalled_client_does_not_block_others(served):
    """Half a request sits on one connection (server socket timeout 30 s) while a full request completes."""
    _, url = served
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()
    slow = socket.create_connection((host, int(port)), timeout=60)
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n{\"messa")
        time.sleep(0.2)
        t0 = time.perf_counter()
        status, _ = post(url + "/chat/completions", {"messages": CHAT, "max_tokens": 3})
        elapsed = time.perf_counter() - t0
        assert status == 200 and elapsed < 15
        slow.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the stalled request is still waiting for its body, unanswered
            slow.recv(1)
    finally:
        slow.close()


def test_llm_judge_end_to_end_counts_garbage_from_a_random_model(served):
    """tiny-random answers noise: every judge reply is malformed, each is counted, nothing raises, and the
    server saw every prompt in both orders."""
    server, url = served
    server.seen.clear()
    judge = LLMJudge(OpenAIBackend(url, "tiny-random", max_tokens=6, temperature=0.0, concurrency=2))
    prompts = ["What is 2+2?", "Name a colour."]
    res = compare_answers(judge, prompts, ["four", "red"], ["five", "blue"], n_boot=10)
    assert res.outcomes == [None, None] and res.win_rate is None
    assert sum(res.malformed.values()) == 4 and judge.stats()["malformed_total"] == 4
    seen = [r["prompts"][0][-1]["content"] for r in server.seen if r["endpoint"] == "chat"]
    for a, b in (("four", "five"), ("red", "blue")):
        orders = {(t.index(f"\n{a}\n") < t.index(f"\n{b}\n")) for t in seen if f"\n{a}\n" in t}
        assert orders == {True, False}  # A-then-B and B-then-A both reached the server


def _always_a_model(dirpath, tiny):
    """A 2-layer Llama that greedily replies "A" then EOS whatever it is asked: attention and MLP outputs
    are zeroed, so the last hidden state is the (normed) input embedding; every token but "A" embeds to
    e1 and "A" to e0; the head maps e1 -> "A" and e0 -> EOS with logit 10 * sqrt(64) = 80 vs 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = tiny
    a_id, = tok("A", add_special_tokens=False).input_ids
    cfg = LlamaConfig(**{**model.config.to_dict(), "tie_word_embeddings": False})
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = m.model.embed_tokens.weight
        emb.zero_()
        emb[:, 1] = 1.0
        emb[a_id] = 0.0
        emb[a_id, 0] = 1.0
        head = m.lm_head.weight
        head.zero_()
        head[a_id, 1] = 10.0
        head[tok.eos_token_id, 0] = 10.0
    m.generation_config.eos_token_id = tok.eos_token_id
    m.save_pretrained(dirpath, safe_serialization=True)
    tok.save_pretrained(dirpath)
    return dirpath


def test_llm_judge_against_alignlab_serve_subprocess(tmp_path, tiny):
    """`alignlab serve DIR --port 0` in a subprocess serves a judge that always answers "A". Pairwise in both
    orders: p = (1 + (1 - 1)) / 2 = 0.5 on every prompt (position bias cancelled), win rate 0.5, no
    malformed reply. Single grading: "A" is not a rating, so both grades are counted as no_verdict."""
    model_dir = _always_a_model(tmp_path / "always_a", tiny)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignlab", "serve", str(model_dir), "--host", HOST,
                             "--port", "0", "--quiet", "--device", "cpu", "--model-id", "always-a"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(1)
        judge = LLMJudge(OpenAIBackend(url, "always-a", max_tokens=4))
        res = compare_answers(judge, ["q1", "q2", "q3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"], n_boot=50)
        assert res.outcomes == [0.5, 0.5, 0.5] and res.malformed == {}
        assert res.win_rate.rate == 0.5 and judge.stats()["order_agreement"] == 0.0
        assert [r.raw["ab_verdict"] for r in res.results] == ["A"] * 3
        assert [r.raw["ba_verdict"] for r in res.results] == ["A"] * 3
        single = LLMJudge(OpenAIBackend(url, "always-a", max_tokens=4), mode="single")
        r = single.compare("q", "x", "y")
        assert r.prob_a_better is None and single.malformed == {"no_verdict": 2}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_llm_judge_over_a_local_model(tmp_path, tiny):
    """The same protocol without HTTP: build_judge on a local model dir runs the judge in-process."""
    from alignlab.eval.pairwise import JudgeConfig, build_judge

    judge = build_judge(JudgeConfig(model=str(_always_a_model(tmp_path / "always_a", tiny)), max_tokens=4),
                        device="cpu")
    res = compare_answers(judge, ["q1", "q2"], ["a1", "a2"], ["b1", "b2"], n_boot=10)
    assert res.outcomes == [0.5, 0.5] and res.malformed == {}
    grades = LLMJudge(judge.backend, mode="single").grade_batch(["q"], ["x"])
    assert grades == [(None, "no_verdict")]


def test_hostile_json_bodies(served):
    _, url = served
    status, out = post(url + "/chat/completions", None, raw=b"[" * 2000 + b"]" * 2000)
    assert status == 400 and out["error"]["code"] == "invalid_json"
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    status, out = post(url + "/chat/completions", None, raw=raw)
    assert status == 400 and out["error"]["param"] == "temperature"


def test_connection_flood_gets_503_and_the_server_recovers(tiny):
    httpd = make_http_server(ModelServer(*tiny), HOST, 0, socket_timeout=30.0, quiet=True, max_connections=2)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = base_url(httpd)
    port = httpd.server_address[1]
    idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(2)]
    try:
        for s in idle:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")  # then silence: each holds a thread
        time.sleep(0.3)
        reply = _raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 503") and b"too_many_connections" in reply
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        assert r.status == 200
    httpd.shutdown()
    httpd.server_close()
