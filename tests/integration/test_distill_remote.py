"""On-policy distillation from a teacher behind an OpenAI-compatible endpoint: `alignlab serve` returns the
prompt's token log-probs for `echo: true, max_tokens: 0` (checked against a plain forward), and a distill run
whose teacher is that endpoint takes the same steps (loss, gradient norm, held-out KL, final weights) as the
same teacher loaded locally with the same sampled-token estimator."""

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.rl.config import DistillConfig
from alignlab.rl.teacher import RemoteTeacher
from alignlab.serve import ModelServer, base_url, make_http_server


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """tiny-random plus noise (so the student, tiny-random, has something to learn), saved and served."""
    from alignlab.models.load import load_model, load_tokenizer

    tmp = tmp_path_factory.mktemp("teacher")
    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(tmp / "teacher")
    tok.save_pretrained(tmp / "teacher")
    httpd = make_http_server(ModelServer(model, tok, model_id="teacher"), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"dir": str(tmp / "teacher"), "url": base_url(httpd).removesuffix("/v1"), "model": model, "tok": tok}
    httpd.shutdown()
    httpd.server_close()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_echo_returns_the_prompt_token_logprobs(teacher):
    ids = [5, 17, 99, 3, 250, 42]
    code, body = post(teacher["url"], {"prompt": [ids, ids[:3]], "echo": True, "max_tokens": 0, "logprobs": 1,
                                       "return_token_ids": True, "return_tokens_as_token_ids": True})
    assert code == 200, body
    with torch.no_grad():
        logp = torch.log_softmax(teacher["model"](input_ids=torch.tensor([ids])).logits[0].double(), -1)
    want = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
    first, second = body["choices"]
    lp = first["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-5)
    assert lp["tokens"] == [f"token_id:{t}" for t in ids] and first["prompt_token_ids"] == ids
    assert first["token_ids"] == [] and first["text"] == teacher["tok"].decode(ids)
    assert lp["top_logprobs"][0] is None and all(len(d) == 1 for d in lp["top_logprobs"][1:])
    assert max(lp["top_logprobs"][2].values()) >= lp["token_logprobs"][2] - 1e-6
    assert second["logprobs"]["token_logprobs"][1:] == pytest.approx(want[:2], abs=1e-5)
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}
    code, text = post(teacher["url"], {"prompt": "Hello there", "echo": True, "max_tokens": 0})
    assert code == 200 and text["choices"][0]["logprobs"] is None
    for extra, param in (({"max_tokens": 1}, "max_tokens"), ({"stream": True}, "stream"), ({"n": 2}, "n")):
        code, err = post(teacher["url"], {"prompt": ids, "echo": True, "max_tokens": 0, **extra})
        assert code == 400 and err["error"]["code"] == "unsupported" and err["error"]["param"] == param


def _run(tmp_path, name: str, teacher) -> tuple[list[dict], dict]:
    from alignlab.recipes.distill import run

    cfg = DistillConfig(model="tiny-random", teacher=teacher, kl_estimator="sampled", data="builtin:reverse",
                        num_prompts=16, eval_prompts=4, batch_size=4, num_generations=2, max_steps=2,
                        max_new_tokens=6, learning_rate=1e-3, eval_steps=2, logging_steps=1, save_steps=100,
                        output_dir=str(tmp_path / name), progress="none", cpu_threads=1)
    result = run(cfg)
    from safetensors.torch import load_file

    return result.history, load_file(str(tmp_path / name / "model.safetensors"))


def test_remote_teacher_steps_equal_the_local_teacher_with_the_sampled_estimator(teacher, tmp_path):
    local, w_local = _run(tmp_path, "local", teacher["dir"])
    remote, w_remote = _run(tmp_path, "remote", RemoteTeacher(url=teacher["url"], model="teacher"))
    steps = [(a, b) for a, b in zip(local, remote) if "loss" in a]
    assert len(steps) == 2 and len(local) == len(remote)
    for a, b in steps:
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4) and a["grad_norm"] > 0
    evals = [(a["eval_kl"], b["eval_kl"]) for a, b in zip(local, remote) if "eval_kl" in a]
    assert evals and all(b == pytest.approx(a, rel=1e-4, abs=1e-6) for a, b in evals)
    assert w_local.keys() == w_remote.keys()
    # Two Adam steps of lr 1e-3 move weights by up to 2e-3; Adam's normalisation turns float32 differences of
    # near-zero gradient entries into update differences (4e-6 at most here, 0.2% of a step).
    diffs = {k: float((w_local[k] - w_remote[k]).abs().max()) for k in w_local}
    assert max(diffs.values()) < 2e-5, diffs


def test_a_remote_teacher_refuses_what_needs_the_whole_distribution():
    with pytest.raises(ConfigError, match="whole distribution"):
        DistillConfig(teacher="http://127.0.0.1:9").validate()
    with pytest.raises(ConfigError, match="beta"):
        DistillConfig(teacher="tiny-random", kl_estimator="sampled", beta=0.5).validate()
    with pytest.raises(ConfigError, match="temperature 1"):
        DistillConfig(teacher=RemoteTeacher(url="http://127.0.0.1:9"), kl_estimator="sampled", temperature=0.7).validate()


def test_the_teacher_key_takes_a_url_or_an_endpoint_mapping():
    from alignlab.config import load_config
    from alignlab.rl.teacher import remote_teacher

    by_url = load_config(DistillConfig, None, ["teacher=http://127.0.0.1:9", "kl_estimator=sampled"])
    mapped = load_config(DistillConfig, None, ["teacher.url=http://127.0.0.1:9", "teacher.model=t",
                                               "kl_estimator=sampled"])
    assert remote_teacher(by_url.teacher) == RemoteTeacher(url="http://127.0.0.1:9")
    assert mapped.teacher == RemoteTeacher(url="http://127.0.0.1:9", model="t")
    assert remote_teacher(load_config(DistillConfig, None, ["teacher=tiny-random"]).teacher) is None
    with pytest.raises(ConfigError, match="unknown key teacher.bogus for RemoteTeacher"):
        load_config(DistillConfig, None, ["teacher.bogus=1", "kl_estimator=sampled"])


def test_remote_token_logprobs_finds_the_model_and_names_the_teacher_in_errors(teacher):
    from alignlab.errors import AlignlabError
    from alignlab.rl.teacher import remote_token_logprobs

    ids = [5, 17, 99, 3]
    with torch.no_grad():
        logp = torch.log_softmax(teacher["model"](input_ids=torch.tensor([ids])).logits[0].double(), -1)
    got = remote_token_logprobs(RemoteTeacher(url=teacher["url"]), [ids, ids[:2]])  # model: from /v1/models
    assert got[0] == pytest.approx([float(logp[t - 1, ids[t]]) for t in range(1, 4)], abs=1e-5)
    assert got[1] == pytest.approx(got[0][:1], abs=1e-5)  # another sequence length, another float32 forward
    with pytest.raises(AlignlabError, match=r"teacher POST .*/v1/completions: HTTP 400: .*outside the vocabulary"):
        remote_token_logprobs(RemoteTeacher(url=teacher["url"], model="teacher"), [[5, 10**7]])
    with pytest.raises(AlignlabError, match="teacher GET http://127.0.0.1:9/v1/models: cannot reach"):
        remote_token_logprobs(RemoteTeacher(url="http://127.0.0.1:9", timeout=5), [ids])


@pytest.mark.slow
def test_distill_from_a_served_teacher_lowers_the_held_out_kl(tmp_path):
    """As test_online_rl's distill test, with the teacher (tiny-random after 40 SFT steps on digit reversal)
    behind `alignlab serve` on loopback and the sampled-token estimator: the held-out KL estimate falls."""
    from alignlab.data.builtin import write_digit_sft
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.recipes.distill import run
    from alignlab.recipes.sft import SFTConfig
    from alignlab.recipes.sft import run as sft_run

    data = write_digit_sft(tmp_path / "rev.jsonl", "reverse", 600, seed=3)
    sft_run(SFTConfig(model="tiny-random", data=str(data), max_steps=40, batch_size=16, learning_rate=3e-3,
                      eval_split=0.0, output_dir=str(tmp_path / "teacher"), cpu_threads=1, progress="none"))
    server = ModelServer(load_model(str(tmp_path / "teacher")), load_tokenizer(str(tmp_path / "teacher")))
    httpd = make_http_server(server, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        result = run(DistillConfig(model="tiny-random", teacher=base_url(httpd).removesuffix("/v1"),
                                   kl_estimator="sampled", data="builtin:reverse", num_prompts=64, eval_prompts=16, num_generations=4,
                                   batch_size=8, max_steps=24, max_new_tokens=6, learning_rate=3e-3, eval_steps=24,
                                   output_dir=str(tmp_path / "student"), progress="none", cpu_threads=1))
    finally:
        httpd.shutdown()
        httpd.server_close()
    evals = [r["eval_kl"] for r in result.history if "eval_kl" in r]
    assert len(evals) == 2 and evals[-1] < 0.8 * evals[0], evals


def test_a_served_teacher_with_another_tokenizer_is_refused(teacher):
    """A local teacher's tokenizer was compared with the student's, an endpoint's never: a teacher served with
    another 512-token BPE (252 ids read apart) was distilled from. The probe's ids, echoed, must decode the same."""
    from types import SimpleNamespace

    from alignlab.errors import AlignlabError
    from alignlab.models.tokenizer import train_bpe_tokenizer
    from alignlab.rl.teacher import _check_remote_tokens

    student = SimpleNamespace(tokenizer=teacher["tok"])
    _check_remote_tokens(RemoteTeacher(url=teacher["url"], model="teacher"), student)  # the same tokenizer
    other = train_bpe_tokenizer(["To be, or not to be, that is the question."] * 50 + ["the king is dead"] * 50,
                                vocab_size=len(teacher["tok"]))
    httpd = make_http_server(ModelServer(teacher["model"], other, model_id="other"), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(AlignlabError, match="its tokenizer reads the student's tokens of .* as"):
            _check_remote_tokens(RemoteTeacher(url=base_url(httpd).removesuffix("/v1"), model="other"), student)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_new_teacher_timeout_or_key_variable_resumes():
    """As a rollout engine's: how long to wait and where the key is change no number; another URL is another teacher."""
    from alignlab.train.resume import config_differences

    saved = "teacher:\n  url: http://h:8000\n  timeout: 600.0\n  api_key_env: null\n"
    assert config_differences(saved, saved.replace("600.0", "1200.0").replace("null", "KEY")) == []
    assert config_differences(saved, saved.replace("h:8000", "other:8000"))
