"""Security: crafted pickles never run, remote code stays off, the judge key never lands anywhere, and the
HTTP server answers garbage with 4xx, not 500s or hangs.

The pickles here carry a real payload (`__reduce__` -> os.system("touch MARKER")), so "refused" is checked
by the marker file never appearing, not only by an error message. Beside this file: tests/unit/
test_models_load.py (pickle refused, opt-in loads the same logits), tests/unit/test_eval_judges.py (key
scrubbed from backend errors), tests/integration/test_serve.py (413 before reading, hostile JSON bodies,
stalled clients, connection floods).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import os
import pickle
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.cli import main
from alignlab.errors import AlignlabError

SECRET = "sk-security-SECRET-5550123"


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state": Payload(marker), "weight": [1.0]}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alignlab.models.load import load_model, load_tokenizer

    d = tmp_path_factory.mktemp("tiny") / "model"
    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    return dst


def test_pickle_only_model_is_refused_and_its_payload_never_runs(tiny, tmp_path):
    """Library and CLI: a folder whose only weights are a crafted pytorch_model.bin is refused (exit 2 from
    the CLI, no traceback) before anything is unpickled."""
    from alignlab.models.load import load_model

    marker = tmp_path / "PWNED"
    model_dir = copy_without_weights(tiny, tmp_path / "pickled")
    plant(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(AlignlabError, match="only pickle weights.*allow_pickle=True"):
        load_model(str(model_dir))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["sft", f"model={model_dir}", f"data={data}", f"output_dir={tmp_path / 'out'}", "progress=none"])
    assert code == 2 and "only pickle weights" in err.getvalue() and "Traceback" not in err.getvalue()
    assert not marker.exists()


def test_safetensors_win_over_a_planted_pickle_beside_them(tiny, tmp_path):
    from alignlab.models.load import load_model

    marker = tmp_path / "PWNED"
    model_dir = tmp_path / "both"
    shutil.copytree(tiny, model_dir)
    plant(model_dir / "pytorch_model.bin", marker)
    loaded = load_model(str(model_dir))
    reference = load_model(str(tiny))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    assert not marker.exists()


def test_pickle_adapter_is_refused_and_its_payload_never_runs(tiny, tmp_path):
    from alignlab.models.load import load_model
    from alignlab.models.lora import LoraConfig, apply_lora

    marker = tmp_path / "PWNED"
    adapter = tmp_path / "adapter"
    apply_lora(load_model(str(tiny)), LoraConfig(r=2, alpha=4)).save_pretrained(adapter)
    (adapter / "adapter_model.safetensors").unlink()
    plant(adapter / "adapter_model.bin", marker)
    with pytest.raises(AlignlabError, match="only pickle weights.*allow_pickle=True"):
        load_model(str(adapter))
    assert not marker.exists()


@pytest.mark.parametrize("tamper", ["payload", "truncated", "model.safetensors", "trainer_state.json"])
def test_resume_never_unpickles_a_planted_optimizer_state(tmp_path, tamper):
    """resume=auto picks the newest checkpoint; its optimizer.pt was replaced. Resume stops with a
    CheckpointError naming the file; the payload does not run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.data.collate import Collator
    from alignlab.train import TrainConfig, train
    from alignlab.train.checkpoint import CheckpointError
    from alignlab.train.steps import causal_lm_step

    def model():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1))

    data = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 2, 3, 4]}] * 8
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=2, save_steps=2, progress="none",
                      device="cpu")
    train(cfg, model(), causal_lm_step, data, Collator(0))
    marker = tmp_path / "PWNED"
    # a cut model or state file was a raw SafetensorError / JSONDecodeError traceback naming no file
    name = tamper if tamper.endswith((".safetensors", ".json")) else "optimizer.pt"
    target = tmp_path / "run" / "checkpoint-4" / name
    if tamper == "payload":
        plant(target, marker)
    else:
        target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint-4/{name}: unreadable"):
        cfg.max_steps = 6  # extend the finished run, so it resumes from checkpoint-4 (a rerun as-is is a no-op)
        train(cfg, model(), causal_lm_step, data, Collator(0))
    assert not marker.exists()


def test_remote_code_stays_off_by_default(tiny, tmp_path):
    """A folder whose config points at custom code (auto_map) is refused; its module is never imported.
    Every shipped config dataclass leaves trust_remote_code / allow_pickle off (or has no such key)."""
    from alignlab.models.load import load_model, load_tokenizer

    marker = tmp_path / "PWNED"
    remote = tmp_path / "remote"
    shutil.copytree(tiny, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="evilmodel", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (remote / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((remote / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (remote / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (remote / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(AlignlabError, match="custom code"):
        load_model(str(remote))
    load_tokenizer(str(remote))  # the built-in tokenizer class is used; the auto_map is ignored
    assert not marker.exists()
    for fn in (load_model, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_model).parameters["allow_pickle"].default is False
    for cls in config_classes():
        for f in dataclasses.fields(cls):
            if f.name in ("trust_remote_code", "allow_pickle"):
                assert f.default is False, f"{cls.__name__}.{f.name} must default to False"


def config_classes() -> list[type]:
    """Every config dataclass the CLI builds (recipes and eval), found through their modules."""
    found = []
    for name in ("alignlab.recipes.sft", "alignlab.recipes.pretrain", "alignlab.recipes.dpo",
                 "alignlab.recipes.reward", "alignlab.rl.config", "alignlab.eval.runner"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found += [v for v in vars(module).values() if dataclasses.is_dataclass(v) and isinstance(v, type)
                  and v.__name__.endswith("Config")]
    assert len(found) >= 4
    return found


class EchoingJudge(BaseHTTPRequestHandler):
    """A careless endpoint: every verdict reply and every error echoes the Authorization header."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        EchoingJudge.seen.append(auth)
        fail = len(EchoingJudge.seen) % 3 == 0
        payload = ({"error": {"message": f"rejected {auth}"}} if fail else
                   {"choices": [{"message": {"role": "assistant", "content": f"[[A]] (you sent {auth})"}}]})
        data = json.dumps(payload).encode()
        self.send_response(401 if fail else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_judge_key_never_reaches_console_config_or_reports(tmp_path, monkeypatch):
    """`alignlab eval` with an LLM judge whose key is in an env var; the endpoint echoes the key back in
    answers and errors. Every file under output_dir and everything printed is free of the key."""
    EchoingJudge.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoingJudge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Name a colour.", "Say hi.")))
    out = tmp_path / "out"
    config = {"checkpoints": ["tiny-random"], "baseline": "tiny-random", "device": "cpu", "n_boot": 20,
              "output_dir": str(out), "evaluations": [{
                  "kind": "win_rate", "name": "wr", "data": str(prompts),
                  "sampling": {"max_new_tokens": 3, "temperature": 1.0, "seed": 0},
                  "judge": {"kind": "llm", "base_url": f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                            "model_name": "judge", "max_tokens": 8, "api_key_env": "ALIGNLAB_SECURITY_KEY",
                            "max_retries": 0}}]}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("ALIGNLAB_SECURITY_KEY", SECRET)
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            code = main(["eval", "--config", str(tmp_path / "eval.yaml")])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0, console.getvalue()[-2000:]
    assert EchoingJudge.seen and all(a == f"Bearer {SECRET}" for a in EchoingJudge.seen)  # the key was used
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "eval.json" for p in files)
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    leaks += ["console"] if SECRET in console.getvalue() else []
    assert not leaks, f"the judge key leaked into {leaks}"


@pytest.fixture(scope="module")
def server_url():
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.serve import ModelServer, make_http_server

    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    httpd = make_http_server(ModelServer(model, tok, max_body_bytes=2048, max_tokens_limit=4), "127.0.0.1", 0,
                             socket_timeout=2.0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address
    httpd.shutdown()
    httpd.server_close()


def raw_exchange(address, request: bytes) -> bytes:
    with socket.create_connection(address, timeout=20) as s:
        s.sendall(request)
        try:
            s.shutdown(socket.SHUT_WR)  # no more bytes are coming: a server waiting for a body must give up
        except OSError:  # the server already answered (e.g. 400 on the request line) and closed: allowed
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            # A server that answers (e.g. 431) and closes before reading all we sent makes the kernel reset
            # the connection; whether the reply or the reset reaches us first is timing. A closed
            # connection is an allowed outcome, and /health is checked after every request anyway.
            pass
    return b"".join(chunks)


METHODS = st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"PATCH", b"", b"P\x00ST", b"\xff"])
PATHS = st.sampled_from([b"/v1/chat/completions", b"/v1/completions", b"/health", b"/v1/models", b"/../../etc",
                         b"/v1/chat/completions?x=" + b"A" * 3000, b"*", b""])
HEADERS = st.lists(st.sampled_from([b"Content-Length: 10", b"Content-Length: -5", b"Content-Length: abc",
                                    b"Content-Length: 99999999999999999999", b"Transfer-Encoding: chunked",
                                    b"Content-Type: application/json", b"X: " + b"y" * 70000, b"\x00\x01",
                                    b"Content-Length: 2", b"Content-Length: 3"]), max_size=3)
BODIES = st.one_of(st.binary(max_size=64), st.sampled_from([
    b'{"messages": "hi"}', b'{"messages": [{"role": "user", "content": ["x"]}], "max_tokens": 2}',
    b'{"prompt": [[1, 2]], "max_tokens": 2}', b'{"prompt": "a", "n": 1e308}', b'{"prompt": "a", "stop": [[]]}',
    b'{"messages": [{"role": "tool", "content": null}]}', b'{"prompt": "\\ud800", "max_tokens": 2}']))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES)
def test_server_answers_malformed_requests_without_500_or_hang(server_url, method, path, headers, body):
    """Any request line, header mix (bad / huge / contradictory Content-Length, chunked) and body: a 2xx,
    a 4xx, a 501 for unsupported methods, or a closed connection; never a 500, and /health stays up."""
    request = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers)
    reply = raw_exchange(server_url, request + b"\r\n" + body)
    status = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/") else b""
    assert not status.startswith(b"5") or status in (b"501", b"505"), reply[:300]
    health = raw_exchange(server_url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert health.startswith(b"HTTP/1.0 200"), health[:200]
