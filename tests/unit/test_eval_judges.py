"""Judges: verdict / rating parsing on hand-written replies, both-order combination, malformed counting,
score judges' probabilities, and the HTTP backend's retries and key hygiene (against a stand-in endpoint)."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignlab.config import ConfigError, from_dict
from alignlab.errors import AlignlabError
from alignlab.eval.backends import BackendError, OpenAIBackend
from alignlab.eval.judges import FunctionJudge, LLMJudge, RewardModelJudge, parse_rating, parse_verdict
from alignlab.eval.pairwise import JudgeConfig, compare_answers


@pytest.mark.parametrize("reply, expected", [
    ("[[A]]", ("A", None)),
    ("Answer B is wrong about the date. Verdict: [[A]]", ("A", None)),
    ("Both are fine.\n[[C]]", ("C", None)),
    ("[[tie]]", ("C", None)),
    ("[[ b ]]", ("B", None)),
    ("[[A]] and on reflection again [[A]]", ("A", None)),
    ("A", ("A", None)),
    ("'B'.", ("B", None)),
    ("[[A]] no wait [[B]]", (None, "ambiguous")),
    ("", (None, "empty")),
    ("   \n", (None, "empty")),
    (None, (None, "empty")),
    ("I prefer the first answer", (None, "no_verdict")),
    ("Assistant A is better", (None, "no_verdict")),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize("reply, expected", [
    ("Clear and correct. Rating: [[7]]", (7.0, None)),
    ("[[8.5]]", (8.5, None)),
    ("[[7/10]]", (7.0, None)),
    ("Rating: [6]", (6.0, None)),
    ("9", (9.0, None)),
    ("[[11]]", (None, "out_of_range")),
    ("[[0]]", (None, "out_of_range")),
    ("[[3]] or maybe [[4]]", (None, "ambiguous")),
    ("great answer", (None, "no_verdict")),
    ("", (None, "empty")),
])
def test_parse_rating(reply, expected):
    assert parse_rating(reply) == expected


class ScriptedBackend:
    """Stands in for an external judge model: answers each conversation with `reply(user_text)`."""

    def __init__(self, reply):
        self.reply, self.asked = reply, []

    def chat_many(self, conversations):
        self.asked += [c[-1]["content"] for c in conversations]
        return [self.reply(c[-1]["content"]) for c in conversations]


def _first_answer(text):
    return re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S).group(1)


def test_position_biased_judge_is_cancelled_by_both_orders():
    """A judge that always says "[[A]]" prefers whatever comes first: asked in both orders it says
    A>B and then B>A, so p = (1 + (1 - 1)) / 2 = 0.5 for every prompt, and the orders never agree."""
    backend = ScriptedBackend(lambda _: "[[A]]")
    judge = LLMJudge(backend)
    res = judge.compare_batch(["q1", "q2"], ["good", "x"], ["bad", "y"])
    assert [r.prob_a_better for r in res] == [0.5, 0.5]
    assert len(backend.asked) == 4
    assert [_first_answer(t) for t in backend.asked] == ["good", "x", "bad", "y"]  # both orders were asked
    assert judge.stats()["order_agreement"] == 0.0
    assert judge.malformed == {}


def test_consistent_judge_and_one_order_only():
    backend = ScriptedBackend(lambda t: "[[A]]" if _first_answer(t) == "good" else "[[B]]")
    judge = LLMJudge(backend)
    res = judge.compare_batch(["q", "q"], ["good", "bad"], ["bad", "good"])
    assert [r.prob_a_better for r in res] == [1.0, 0.0]
    assert judge.stats()["order_agreement"] == 1.0
    single_order = LLMJudge(ScriptedBackend(lambda _: "[[A]]"), both_orders=False)
    assert single_order.compare("q", "a", "b").prob_a_better == 1.0  # position bias left in, as asked


def test_malformed_replies_are_counted_and_partial_verdicts_used():
    """First order garbage, swapped order "[[B]]" (= answer A in the swap): p = 1 - 0 = 1.0 from one order.
    All garbage: p None with the kind; a failed request counts as request_failed. Nothing raises."""
    replies = iter(["blah", "[[B]]"])
    judge = LLMJudge(ScriptedBackend(lambda _: next(replies)))
    r = judge.compare("q", "a", "b")
    assert r.prob_a_better == 1.0 and r.error is None and judge.malformed == {"no_verdict": 1}

    judge = LLMJudge(ScriptedBackend(lambda _: "%%% garbage"))
    res = judge.compare_batch(["q"] * 3, ["a"] * 3, ["b"] * 3)
    assert all(r.prob_a_better is None and r.error == "no_verdict" for r in res)
    assert judge.stats()["malformed"] == {"no_verdict": 6} and judge.stats()["comparisons"] == 3

    judge = LLMJudge(ScriptedBackend(lambda _: BackendError("HTTP 500", "request_failed")))
    assert judge.compare("q", "a", "b").error == "request_failed"
    assert judge.malformed == {"request_failed": 2}


def test_single_answer_grading():
    judge = LLMJudge(ScriptedBackend(lambda t: "Rating: [[8]]" if "good" in t else "[[3]]"), mode="single")
    res = judge.compare_batch(["q", "q", "q"], ["good", "bad", "bad"], ["bad", "good", "bad"])
    assert [r.prob_a_better for r in res] == [1.0, 0.0, 0.5]
    assert res[0].raw == {"rating_a": 8.0, "rating_b": 3.0}
    judge = LLMJudge(ScriptedBackend(lambda t: "[[12]]" if "good" in t else "[[3]]"), mode="single")
    assert judge.compare("q", "good", "bad").error == "out_of_range"


def test_reward_model_judge_soft_and_hard():
    """Scores are lengths: r_a = 3, r_b = 1. soft, scale 2: sigmoid((3 - 1) / 2) = sigmoid(1) = 0.7310585786.
    hard: 1.0; with tie_tolerance 2 the difference 2 is a tie, 0.5. Reversed: 1 - 0.7310585786."""
    def lengths(prompts, completions):
        return [len(c) for c in completions]

    soft = RewardModelJudge(lengths, scale=2.0)
    assert soft.compare("q", "abc", "a").prob_a_better == pytest.approx(0.7310585786)
    assert soft.compare("q", "a", "abc").prob_a_better == pytest.approx(1 - 0.7310585786)
    assert soft.compare("q", "a" * 2000, "").prob_a_better == 1.0  # no overflow
    assert RewardModelJudge(lengths, mode="hard").compare("q", "abc", "a").prob_a_better == 1.0
    assert RewardModelJudge(lengths, mode="hard", tie_tolerance=2).compare("q", "abc", "a").prob_a_better == 0.5


def test_function_judge_isolates_failures():
    def exact(prompt, completion):
        if completion == "boom":
            raise ValueError("cannot score")
        return float("nan") if completion == "nan" else float(completion.strip() == "4")

    judge = FunctionJudge(exact, per_item=True)
    res = judge.compare_batch(["2+2"] * 4, ["4", "5", "boom", "4"], ["5", "5", "4", "nan"])
    assert [r.prob_a_better for r in res] == [1.0, 0.5, None, None]
    assert [r.error for r in res] == [None, None, "function_error", "bad_score"]
    assert judge.malformed == {"function_error": 1, "bad_score": 1}


def test_function_judge_from_reward_registry():
    judge = FunctionJudge("sentiment")
    assert judge.compare("review", "A wonderful, great film.", "A terrible, awful film.").prob_a_better == 1.0


def test_compare_answers_win_rate_counts_undecided():
    """Outcomes 1, 0.5, None (garbage), 0 -> win rate over the 3 decided = (1 + 0.5 + 0) / 3 = 0.5."""
    replies = {"w": "[[A]]", "t": "[[C]]", "g": "???", "l": "[[B]]"}

    def reply(text):
        first = _first_answer(text)
        verdict = replies[first[0]]
        swapped = {"[[A]]": "[[B]]", "[[B]]": "[[A]]"}.get(verdict, verdict)
        return verdict if first.endswith("1") else swapped

    judge = LLMJudge(ScriptedBackend(reply))
    res = compare_answers(judge, ["q"] * 4, ["w1", "t1", "g1", "l1"], ["w2", "t2", "g2", "l2"], n_boot=200)
    assert res.outcomes == [1.0, 0.5, None, 0.0]
    assert res.win_rate.rate == pytest.approx(0.5) and res.win_rate.n == 3 and res.undecided == 1
    assert res.malformed == {"no_verdict": 2}


def test_compare_answers_refuses_lists_of_other_lengths():
    """Checked per batch only, 5 answers for 3 prompts at batch_size 3 were judged on the first 3 (win rate 1.0)."""
    judge = FunctionJudge(lambda prompts, completions, **kw: [float(len(c)) for c in completions])
    with pytest.raises(AlignlabError, match="one entry per prompt"):
        compare_answers(judge, ["q"] * 3, ["long answer"] * 5, ["b"] * 3, n_boot=10, batch_size=3)
    with pytest.raises(AlignlabError, match="'answer': 1"):
        compare_answers(judge, ["q"] * 3, ["a"] * 3, ["b"] * 3, n_boot=10, batch_size=3, fields={"answer": ["1"]})


def test_judge_config_refuses_keys_and_checks_sources():
    with pytest.raises(ConfigError, match="unknown key api_key"):
        from_dict(JudgeConfig, {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-123"})
    with pytest.raises(AlignlabError, match="exactly one of model"):
        from_dict(JudgeConfig, {"kind": "llm"})
    with pytest.raises(AlignlabError, match="needs reward"):
        from_dict(JudgeConfig, {"kind": "function"})


class _Endpoint(BaseHTTPRequestHandler):
    """A stand-in for a third-party endpoint: 503 twice, then an answer; 401 echoing the auth header."""

    calls = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Endpoint.calls.append((self.path, self.headers.get("Authorization"), body))
        if self.path.endswith("/deny/chat/completions"):
            status, payload = 401, {"error": {"message": f"bad key {self.headers.get('Authorization')}"}}
        elif len([c for c in _Endpoint.calls if c[0] == self.path]) <= 2:
            status, payload = 503, {"error": {"message": "busy"}}
        else:
            status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": "[[B]]"}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Endpoint.calls = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_openai_backend_retries_and_never_exposes_the_key(endpoint, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("ALIGNLAB_TEST_JUDGE_KEY", secret)
    backend = OpenAIBackend(endpoint + "/ok", "m", api_key_env="ALIGNLAB_TEST_JUDGE_KEY", backoff=0.01)
    assert backend.chat_many([[{"role": "user", "content": "hi"}]]) == ["[[B]]"]
    assert len(_Endpoint.calls) == 3  # two 503s retried, then the answer
    assert _Endpoint.calls[-1][1] == f"Bearer {secret}"  # the key went where it belongs
    assert _Endpoint.calls[-1][2]["model"] == "m" and _Endpoint.calls[-1][2]["temperature"] == 0.0
    assert secret not in repr(backend) and secret not in repr(vars(backend))
    assert "top_p" not in _Endpoint.calls[-1][2]  # 1.0, every server's default, is not sent
    # self-instruct's top_p (the paper's 0.5) never reached an endpoint
    OpenAIBackend(endpoint + "/ok", "m", api_key_env="ALIGNLAB_TEST_JUDGE_KEY", backoff=0.01, top_p=0.5).chat_many(
        [[{"role": "user", "content": "hi"}]])
    assert _Endpoint.calls[-1][2]["top_p"] == 0.5

    deny = OpenAIBackend(endpoint + "/deny", "m", api_key_env="ALIGNLAB_TEST_JUDGE_KEY", backoff=0.01)
    (err,) = deny.chat_many([[{"role": "user", "content": "hi"}]])
    assert isinstance(err, BackendError) and "401" in str(err)
    assert secret not in str(err) and "***" in str(err)  # the server echoed the key; it was scrubbed
    judge = LLMJudge(deny)
    r = judge.compare("q", "a", "b")
    assert r.prob_a_better is None and secret not in json.dumps(r.raw) and judge.malformed == {"request_failed": 2}


def test_openai_backend_gives_up_on_a_dead_port():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff=0.01, timeout=2)
    (err,) = backend.chat_many([[{"role": "user", "content": "hi"}]])
    assert isinstance(err, BackendError) and "gave up after 2 attempts" in str(err)
    with pytest.raises(AlignlabError, match="NOT_SET_ANYWHERE is not set"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="NOT_SET_ANYWHERE")


def test_function_judge_passes_row_fields_to_the_reward():
    """GSM8K exact match needs each prompt's reference: 4 vs 5 with reference 4 -> A wins (1.0); swapped
    -> 0.0; both right -> tie 0.5. Without the field the reward raises: counted, not fatal."""
    judge = FunctionJudge("gsm8k")
    res = judge.compare_batch(["2+2?"] * 3, ["It is 4.", "#### 5", "4"], ["5", "4", "#### 4"], answer=["4"] * 3)
    assert [r.prob_a_better for r in res] == [1.0, 0.0, 0.5]
    assert judge.compare("2+2?", "4", "5").error == "function_error"


def test_stats_since_a_snapshot_count_only_what_came_after():
    # one judge serves every checkpoint of an evaluation: eval.json's per-checkpoint `judge` counts were running
    # totals (the second checkpoint reported 12 comparisons of 6 and the first one's order agreement)
    flip = {"on": False}
    judge = LLMJudge(ScriptedBackend(lambda t: "[[A]]" if flip["on"] or _first_answer(t) == "good" else "[[B]]"))
    judge.compare_batch(["q1", "q2"], ["good", "good"], ["bad", "bad"])  # the orders agree
    before = judge.counters()
    flip["on"] = True  # pure position bias from here
    judge.compare_batch(["q1", "q2", "q3"], ["good", "x", "y"], ["bad", "z", "w"])
    assert judge.stats()["comparisons"] == 5 and judge.stats()["order_agreement"] == 2 / 5
    since = judge.stats(since=before)
    assert since["comparisons"] == 3 and since["order_agreement"] == 0.0 and since["malformed_total"] == 0
    before = judge.counters()
    judge.grade_batch(["q"], ["a"])  # "[[A]]" is no rating: malformed, and a grade was asked
    since = judge.stats(since=before)
    assert since["grades"] == 1 and since["malformed_total"] == 1 and since["comparisons"] == 0


@pytest.mark.parametrize("judge", [{"kind": "llm", "model": "m", "temperature": -1.0},
                                   {"kind": "llm", "base_url": "http://x", "concurrency": 0}])
def test_bad_judge_settings_are_config_errors(judge):
    # temperature -1 was accepted, then every request failed inside the backend and the run "succeeded" with
    # every comparison undecided
    with pytest.raises(AlignlabError, match="temperature >= 0, concurrency >= 1"):
        from_dict(JudgeConfig, judge)


def test_eval_refuses_before_any_work_what_could_only_fail_mid_run(tmp_path):
    from alignlab.eval.runner import EvalConfig, run

    def cfg(**kw):
        return from_dict(EvalConfig, {"checkpoints": ["nowhere"], "output_dir": str(tmp_path), **kw})

    with pytest.raises(AlignlabError, match="n_boot and batch_size must be >= 1"):
        cfg(n_boot=0, evaluations=[{"kind": "perplexity", "data": "x.jsonl"}])
    # a judge naming neither model nor base_url failed only when its evaluation came, after earlier ones ran
    with pytest.raises(AlignlabError, match="needs exactly one of model"):
        run(cfg(baseline="b", evaluations=[{"kind": "perplexity", "data": "x.jsonl"},
                                           {"kind": "win_rate", "data": "x.jsonl"}]))
    with pytest.raises(AlignlabError, match="grade needs an llm judge that grades single answers"):
        run(cfg(evaluations=[{"kind": "grade", "data": "x.jsonl"}]), judge=FunctionJudge(lambda p, c: 1.0))
    # ratings of one model failed after the evaluations before it had run, and their results were lost
    for kw in ({"checkpoints": ["a"]}, {"checkpoints": ["a"], "baseline": "a"}):
        with pytest.raises(AlignlabError, match="ratings evaluation needs two models or more, got \\['a'\\]"):
            run(cfg(**kw, evaluations=[{"kind": "perplexity", "data": "x.jsonl"}, {"kind": "ratings", "data": "x.jsonl"}]),
                judge=FunctionJudge(lambda p, c: 1.0))
    assert not (tmp_path / "eval.json").exists()


class _Broken(BaseHTTPRequestHandler):
    """A judge endpoint that cuts its reply short, or answers a status line that is not HTTP."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.close_connection = True
        if self.path.startswith("/cut"):
            self.send_response(200)
            self.send_header("Content-Length", "500")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"mess')
        else:
            self.wfile.write(b"garbage\r\n\r\n")


@pytest.mark.parametrize("path", ["/cut", "/garbled"])
def test_a_reply_cut_short_or_garbled_is_a_failed_request_not_the_end_of_the_evaluation(path):
    # http.client's IncompleteRead and BadStatusLine are no OSErrors: they escaped the retries and ended the run
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
        judge = LLMJudge(OpenAIBackend(url, "m", max_retries=1, backoff=0.01, timeout=5))
        res = compare_answers(judge, ["q1", "q2"], ["a1", "a2"], ["b1", "b2"], n_boot=10)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.outcomes == [None, None] and res.malformed == {"request_failed": 4}


def test_a_reward_model_judge_loads_its_scorer_on_the_evaluation_device(monkeypatch):
    import alignlab.rollout.rewards as rewards
    from alignlab.eval.pairwise import build_judge

    seen = []
    monkeypatch.setattr(rewards, "_load_scorer", lambda path, device="cpu": seen.append(device) or (object(), object()))
    build_judge(JudgeConfig(kind="reward_model", model="runs/rm"), device="cuda")
    assert seen == ["cuda"]  # it loaded on the reward's default, cpu, whatever `device` said
