"""rollout/remote.py against a small HTTP server written here that answers docs/serving.md's protocol by
sampling with the tiny model in-process (so the remote result can be compared with generate's)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_rollout_tiny import tiny_lm

from alignlab.errors import AlignlabError
from alignlab.rollout.generate import SamplingConfig, generate
from alignlab.rollout.remote import RemoteEngine, completion_request, generate_remote, push_weights

PROMPTS = ["Hi", "The quick brown fox", "a=1;"]


class ProtocolServer:
    """Answers /v1/completions as docs/serving.md says (token ids in and out, sampler log-probs, OpenAI
    finish reasons with vLLM's stop_reason), /v1/load_weights and /v1/load_lora_adapter; records bodies."""

    def __init__(self, model, tok, name="policy", lora_text=False):
        self.model, self.tok, self.name, self.lora_text = model, tok, name, lora_text
        self.bodies, self.headers = [], []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                srv.bodies.append((self.path, body))
                srv.headers.append(dict(self.headers))
                status, reply = srv.answer(self.path, body)
                raw = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, path, body):
        if body.get("model", self.name) != self.name:
            return 404, {"error": {"message": f"model {body['model']!r} not found", "code": "model_not_found"}}
        if path == "/v1/load_weights":
            return 200, {"status": "ok", "path": body["path"], "model": self.name}
        if path == "/v1/load_lora_adapter":
            return 200, "Success: LoRA adapter loaded." if self.lora_text else {"status": "ok"}
        greedy = body["temperature"] == 0
        cfg = SamplingConfig(max_new_tokens=body["max_tokens"], temperature=body["temperature"] or 1.0,
                             top_p=body["top_p"], top_k=max(body["top_k"], 0), greedy=greedy, seed=body["seed"],
                             stop=body.get("stop", []), logprobs=body["logprobs"] is not None)
        res = generate(self.model, self.tok, body["prompt"], cfg, n=body["n"])
        choices = []
        for k, s in enumerate(res.samples):
            stop_reason = next((x for x in cfg.stop if x in self.tok.decode(s.completion_ids)), None) \
                if s.finish_reason == "stop" else None
            choices.append({"index": k, "text": s.text, "token_ids": s.completion_ids,
                            "prompt_token_ids": s.prompt_ids, "stop_reason": stop_reason,
                            "finish_reason": "length" if s.finish_reason == "length" else "stop",
                            "logprobs": {"tokens": [f"token_id:{t}" for t in s.completion_ids],
                                         "token_logprobs": s.logprobs, "top_logprobs": None}})
        choices.reverse()  # the client must order by index, not by position
        return 200, {"object": "text_completion", "model": self.name, "choices": choices}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served():
    model, tok = tiny_lm()
    srv = ProtocolServer(model, tok)
    yield srv, model, tok
    srv.close()


def test_remote_samples_equal_in_process_ones_with_the_engines_log_probs(served):
    srv, model, tok = served
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.9, top_k=30, seed=4, logprobs=True)
    engine = RemoteEngine(url=srv.url, model="policy")
    got = generate_remote(engine, tok, PROMPTS, cfg, n=3)
    want = generate(model, tok, PROMPTS, cfg, n=3)
    key = lambda s: (s.prompt_index, s.sample_index, s.prompt_ids, s.completion_ids, s.text, s.finish_reason)  # noqa: E731
    assert [key(s) for s in got.samples] == [key(s) for s in want.samples]
    assert [s.logprobs for s in got.samples] == [s.logprobs for s in want.samples]
    assert got.num_tokens == want.num_tokens
    path, body = srv.bodies[-1]
    assert path == "/v1/completions" and body["prompt"][0] == tok("Hi").input_ids
    assert body["return_token_ids"] is True and body["return_tokens_as_token_ids"] is True
    assert (body["n"], body["top_k"], body["logprobs"], body["seed"]) == (3, 30, 0, 4)


def test_remote_finish_reasons_stop_strings_and_greedy(served):
    srv, model, tok = served
    base = generate(model, tok, PROMPTS, SamplingConfig(greedy=True, max_new_tokens=12)).samples
    stop = base[1].text[3:5]
    cfg = SamplingConfig(greedy=True, max_new_tokens=12, stop=[stop])
    got = generate_remote(RemoteEngine(url=srv.url, model="policy"), tok, PROMPTS, cfg).samples
    want = generate(model, tok, PROMPTS, cfg).samples
    assert [(s.text, s.finish_reason, s.completion_ids) for s in got] == \
        [(s.text, s.finish_reason, s.completion_ids) for s in want]
    assert got[1].finish_reason == "stop" and srv.bodies[-1][1]["temperature"] == 0.0
    assert got[0].logprobs is None


def test_push_weights_full_and_adapter_and_errors(served, tmp_path, monkeypatch):
    srv, _, tok = served
    full, adapter = tmp_path / "full", tmp_path / "lora"
    full.mkdir(), adapter.mkdir()
    (full / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("ENGINE_KEY", "sekrit")
    engine = RemoteEngine(url=srv.url, model="policy", api_key_env="ENGINE_KEY")
    assert push_weights(engine, full)["status"] == "ok"
    assert srv.bodies[-1] == ("/v1/load_weights", {"path": str(full.resolve())})
    assert srv.headers[-1]["Authorization"] == "Bearer sekrit"
    vllm = RemoteEngine(url=srv.url, model="policy", server="vllm")
    push_weights(vllm, adapter)
    assert srv.bodies[-1] == ("/v1/load_lora_adapter", {"lora_name": "policy", "lora_path": str(adapter.resolve()),
                                                        "load_inplace": True})
    srv.lora_text = True
    assert push_weights(vllm, adapter)["message"].startswith("Success")
    with pytest.raises(AlignlabError, match="cannot load full weights"):
        push_weights(vllm, full)
    with pytest.raises(AlignlabError, match="neither config.json"):
        push_weights(engine, tmp_path)
    with pytest.raises(AlignlabError, match="HTTP 404: model 'other' not found"):
        generate_remote(RemoteEngine(url=srv.url, model="other"), tok, PROMPTS[:1], SamplingConfig(max_new_tokens=2))


def test_bad_replies_and_unreachable_servers_are_clear_errors(served):
    srv, _, tok = served
    with pytest.raises(AlignlabError, match="cannot reach the server"):
        generate_remote(RemoteEngine(url="http://127.0.0.1:9", timeout=5), tok, PROMPTS[:1])
    with pytest.raises(AlignlabError, match="temperature"):
        completion_request(RemoteEngine(server="vllm"), [[1, 2]], SamplingConfig(temperature=0.7), 1)
    srv.answer = lambda path, body: (200, {"choices": [{"index": 0, "finish_reason": "stop", "text": ""}]})
    with pytest.raises(AlignlabError, match="choice 0 has no token_ids"):
        generate_remote(RemoteEngine(url=srv.url, model="policy"), tok, PROMPTS[:1])
    with pytest.raises(AlignlabError, match="expected 2 choices"):
        generate_remote(RemoteEngine(url=srv.url, model="policy"), tok, PROMPTS[:1], n=2)
    # replies that were accepted and trained on: more tokens than asked, ids outside the vocabulary, NaN log-probs,
    # an empty answer cut for length
    engine, cfg = RemoteEngine(url=srv.url, model="policy"), SamplingConfig(max_new_tokens=4, logprobs=True)
    for ids, lps, finish, match in (([5] * 10, [-1.0] * 10, "length", "10 token ids for max_tokens 4"),
                                    ([10**6], [-1.0], "stop", r"outside the vocabulary \[0, 64\)"),
                                    ([5], [float("nan")], "stop", "finite log-prob"),
                                    ([], [], "length", "empty with finish_reason length")):
        srv.answer = lambda path, body, c={"index": 0, "finish_reason": finish, "token_ids": ids,
                                             "logprobs": {"token_logprobs": lps}}: (200, {"choices": [c]})
        with pytest.raises(AlignlabError, match=match):
            generate_remote(engine, tok, PROMPTS[:1], cfg, vocab_size=64)


def test_a_server_dying_mid_reply_is_a_clear_error(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def half_reply():  # promises 1000 bytes, sends 13, hangs up (http.client.IncompleteRead escaped as a traceback)
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\": [")
        conn.close()

    threading.Thread(target=half_reply, daemon=True).start()
    _, tok = tiny_lm()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(AlignlabError, match=f"rollout engine POST {url}/v1/completions: cannot reach the server"):
        generate_remote(RemoteEngine(url=url, model="policy"), tok, PROMPTS[:1])
    sock.close()


def test_split_requests_are_seeded_per_request_and_reassembled_in_order(served):
    srv, model, tok = served
    prompts = PROMPTS + ["x"]
    cfg = SamplingConfig(max_new_tokens=5, seed=9, logprobs=True)
    got = generate_remote(RemoteEngine(url=srv.url, model="policy", prompts_per_request=3), tok, prompts, cfg, n=2)
    bodies = [b for p, b in srv.bodies if p == "/v1/completions"][-2:]
    assert [(len(b["prompt"]), b["seed"]) for b in bodies] == [(3, 9), (1, 10)]
    first = generate(model, tok, prompts[:3], cfg, n=2).samples
    last = generate(model, tok, prompts[3:], SamplingConfig(max_new_tokens=5, seed=10, logprobs=True), n=2).samples
    assert [s.completion_ids for s in got.samples] == [s.completion_ids for s in first + last]
    assert [s.prompt_index for s in got.samples] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_vllm_log_probs_the_trainer_cannot_compare_with_are_refused_before_sampling():
    """vLLM's raw log-probs have no temperature (only temperature 1 compares); its processed ones come after
    top-p/top-k and are renormalised (log p - log Z: every IS weight would be Z, not 1). Both are refused with
    what to change; alignlab's own server reports the untruncated temperature log-probs and takes any setting."""
    raw = RemoteEngine(url="http://127.0.0.1:9", model="m", server="vllm")
    processed = RemoteEngine(url="http://127.0.0.1:9", model="m", server="vllm", logprobs_scaled=True)
    ours = RemoteEngine(url="http://127.0.0.1:9", model="m")
    prompts = [[1, 2, 3]]
    with pytest.raises(AlignlabError, match="temperature"):
        completion_request(raw, prompts, SamplingConfig(temperature=0.7), 1)
    completion_request(raw, prompts, SamplingConfig(temperature=1.0, top_p=0.9), 1)  # raw = the trainer's at T 1
    for cfg in (SamplingConfig(temperature=0.7, top_p=0.9), SamplingConfig(temperature=0.7, top_k=50)):
        with pytest.raises(AlignlabError, match="top_p 1 and top_k 0"):
            completion_request(processed, prompts, cfg, 1)
        assert completion_request(ours, prompts, cfg, 1)["temperature"] == 0.7
    assert completion_request(processed, prompts, SamplingConfig(temperature=0.7), 1)["top_p"] == 1.0
