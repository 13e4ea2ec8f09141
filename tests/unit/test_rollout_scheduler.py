"""rollout/scheduler.py: the continuous-batching engine behind `alignlab serve`, checked against the plain
path (`generate`): rows that join a running batch, leave it, or share it with other requests decode the same
tokens and log-probs as they would alone."""

import sys
import threading
import time

import pytest

from alignlab.rollout.generate import SamplingConfig, generate
from alignlab.rollout.scheduler import Engine, QueueFull, Request, SeqParams


@pytest.fixture(scope="module")
def tiny():
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model("tiny-random"), load_tokenizer("tiny-random")


@pytest.fixture()
def engine(tiny):
    e = Engine(*tiny, max_batch=64, max_queue=8)
    yield e
    e.close()


def collect(req: Request, timeout: float = 60.0) -> dict[int, tuple[list[int], list, str]]:
    """seq -> (token ids, log-probs, finish reason) once every sample of the request finished."""
    toks: dict[int, list] = {}
    lps: dict[int, list] = {}
    done: dict[int, str] = {}
    while len(done) < len(req.prompts) * req.n:
        ev = req.events.get(timeout=timeout)
        if ev[0] == "error":
            raise AssertionError(ev)
        if ev[0] == "token":
            toks.setdefault(ev[1], []).append(ev[2])
            lps.setdefault(ev[1], []).append(ev[3])
        else:
            done[ev[1]] = ev[2]
    return {s: (toks.get(s, []), lps.get(s, []), done[s]) for s in done}


def _prompts(tok):
    return [tok(t).input_ids for t in ("Hello there", "A much longer prompt about many different things", "x")]


def test_greedy_rows_of_different_widths_equal_generate(tiny, engine):
    """Three prompts of different lengths join one batch (right-aligned, padded on the left): greedy tokens
    equal generate's and log-probs equal its log-probs."""
    model, tok = tiny
    prompts = _prompts(tok)
    ref = generate(model, tok, prompts, SamplingConfig(max_new_tokens=16, greedy=True, logprobs=True))
    engine.pause()
    reqs = [engine.submit(Request([p], 1, SeqParams(max_tokens=16, temperature=0, logprobs=0))) for p in prompts]
    engine.resume()
    for req, sample in zip(reqs, ref.samples):
        ids, lps, reason = collect(req)[0]
        assert ids == sample.completion_ids and reason == sample.finish_reason
        assert max(abs(a - b) for a, b in zip(lps, sample.logprobs)) < 1e-4
    assert engine.steps <= 16  # one batch: 15 decode steps after the prefill's token, not 3 x 15


def test_a_request_joins_a_running_batch_and_decodes_as_alone(tiny, engine):
    model, tok = tiny
    long_p, short_p = _prompts(tok)[1], _prompts(tok)[0]
    alone = generate(model, tok, [short_p], SamplingConfig(max_new_tokens=8, greedy=True)).samples[0]
    first = engine.submit(Request([long_p], 1, SeqParams(max_tokens=200, temperature=0, ignore_eos=True)))
    while engine.steps < 5:  # the long request is decoding
        threading.Event().wait(0.005)
    joiner = engine.submit(Request([short_p], 1, SeqParams(max_tokens=8, temperature=0)))
    ids, _, reason = collect(joiner)[0]
    assert ids == alone.completion_ids and reason == alone.finish_reason
    collect(first)
    short_rec, long_rec = engine.history[0], engine.history[1]  # in finishing order: the joiner first
    assert long_rec["tokens"] == [200] and short_rec["tokens"] == [len(ids)]
    assert short_rec["admitted_step"] >= 5 and short_rec["finished_step"] < long_rec["finished_step"]


def test_seeded_sampling_equals_generate_while_sharing_the_batch(tiny, engine):
    """Per-request generator, rows drawn in generate's order: 3 prompts x 3 samples at temperature 0.8 and
    top-p 0.9 give generate's tokens, with another request decoding in the same batch."""
    model, tok = tiny
    prompts = _prompts(tok)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, logprobs=True, seed=11)
    ref = generate(model, tok, prompts, cfg, n=3)
    engine.pause()
    other = engine.submit(Request([tok("noise noise").input_ids], 2, SeqParams(max_tokens=30, seed=3)))
    req = engine.submit(Request(prompts, 3, SeqParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=11,
                                                      logprobs=0)))
    engine.resume()
    got = collect(req)
    for s in ref.samples:
        ids, lps, _ = got[s.prompt_index * 3 + s.sample_index]
        assert ids == s.completion_ids
        assert max(abs(a - b) for a, b in zip(lps, s.logprobs)) < 1e-4
    collect(other)


def test_top_logprobs_are_the_most_likely_tokens(tiny, engine):
    import torch

    model, tok = tiny
    prompt = _prompts(tok)[0]
    req = engine.submit(Request([prompt], 1, SeqParams(max_tokens=1, temperature=0, logprobs=3)))
    ev = req.events.get(timeout=30)
    assert ev[0] == "token"
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    top = logp.topk(3)
    assert [a for a, _ in ev[4]] == top.indices.tolist() and ev[2] == top.indices[0].item()
    assert [lp for _, lp in ev[4]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_cancel_drops_rows_and_leaves_others_untouched(tiny, engine):
    model, tok = tiny
    p_keep, p_cancel = _prompts(tok)[0], _prompts(tok)[1]
    alone = generate(model, tok, [p_keep], SamplingConfig(max_new_tokens=40, greedy=True)).samples[0]
    engine.pause()
    gone = engine.submit(Request([p_cancel], 2, SeqParams(max_tokens=500, temperature=0, ignore_eos=True)))
    keep = engine.submit(Request([p_keep], 1, SeqParams(max_tokens=40, temperature=0)))
    engine.resume()
    while engine.steps < 3:
        threading.Event().wait(0.005)
    gone.cancel()
    assert collect(keep)[0][0] == alone.completion_ids
    result = collect(gone)
    assert {r for _, _, r in result.values()} == {"cancelled"}
    assert all(len(ids) < 500 for ids, _, _ in result.values())
    assert engine.finished.get("cancelled") == 2
    assert engine.call(lambda: len(engine.rows)) == 0  # read on the scheduler thread: the rows left the batch


def test_queue_bound_and_calls_on_the_scheduler_thread(tiny):
    e = Engine(*tiny, max_batch=4, max_queue=1)
    try:
        e.pause()
        e.submit(Request([[1, 2, 3]], 1, SeqParams(max_tokens=2)))
        with pytest.raises(QueueFull):
            e.submit(Request([[1, 2, 3]], 1, SeqParams(max_tokens=2)))
        assert e.call(lambda: threading.current_thread().name) == "alignlab-scheduler"  # calls run while paused
        e.resume()
    finally:
        e.close()


def test_a_request_larger_than_the_batch_decodes_as_continuous_generate(tiny):
    """3 prompts x 2 samples through max_batch=4: prompts join as rows finish, exactly as generate() with
    continuous batching and batch_size=4 admits them, so seeded samples coincide."""
    if "continuous_batching" not in SamplingConfig.__dataclass_fields__:
        pytest.skip("this generate() decodes static batches; the parity holds with its continuous batching")
    model, tok = tiny
    prompts = _prompts(tok)
    ref = generate(model, tok, prompts, SamplingConfig(max_new_tokens=10, temperature=1.0, seed=4, batch_size=4,
                                                       logprobs=True), n=2)
    e = Engine(model, tok, max_batch=4)
    try:
        got = collect(e.submit(Request(prompts, 2, SeqParams(max_tokens=10, temperature=1.0, seed=4, logprobs=0))))
        assert e.call(lambda: e.prefills) == 3
    finally:
        e.close()
    for s in ref.samples:
        ids, lps, _ = got[s.prompt_index * 2 + s.sample_index]
        assert ids == s.completion_ids
        assert lps == pytest.approx(s.logprobs, abs=1e-4)


def test_a_request_with_bad_settings_fails_alone(tiny, engine):
    # its settings were first read at admission, on the scheduler thread: the error cancelled every live request
    # and the bad one itself got no event (its reader hung)
    from alignlab.errors import AlignlabError

    model, tok = tiny
    p = _prompts(tok)[0]
    alone = generate(model, tok, [p], SamplingConfig(max_new_tokens=30, greedy=True)).samples[0]
    good = engine.submit(Request([p], 1, SeqParams(max_tokens=30, temperature=0)))
    with pytest.raises(AlignlabError, match="temperature must be > 0"):
        engine.submit(Request([tok("x").input_ids], 1, SeqParams(max_tokens=4, temperature=-1.0)))
    assert collect(good)[0][0] == alone.completion_ids
    # one that fails when it is opened (here: its generator) is told so, and the others go on
    broken = Request([tok("x").input_ids], 1, SeqParams(max_tokens=4, temperature=0))
    broken.params.generator = lambda device: 1 / 0
    good = engine.submit(Request([p], 1, SeqParams(max_tokens=30, temperature=0)))
    engine.submit(broken)
    assert broken.events.get(timeout=60)[0] == "error"
    assert collect(good)[0][0] == alone.completion_ids


def test_a_waiting_request_whose_client_left_holds_no_queue_slot(tiny):
    # it kept its slot until admission, so with a long request decoding new ones got a spurious queue_full
    e = Engine(*tiny, max_batch=1, max_queue=1)
    try:
        e.pause()
        gone = e.submit(Request([[5, 6, 7]], 1, SeqParams(max_tokens=2)))
        gone.cancel()
        assert e.queue_depth == 0
        kept = e.submit(Request([[5, 6, 7]], 1, SeqParams(max_tokens=2, temperature=0)))
        with pytest.raises(QueueFull):
            e.submit(Request([[8]], 1, SeqParams(max_tokens=2)))
        e.resume()
        assert [r for _, _, r in collect(gone).values()] == ["cancelled"]
        assert [r for _, _, r in collect(kept).values()] == ["length"]
    finally:
        e.close()


def test_a_waiting_request_whose_client_left_does_not_block_the_queue_behind_it(tiny):
    # it stayed at the queue's head waiting for the n slots it would never use, so a 1-slot request behind it
    # waited for the long request decoding to end (585 decode steps against 5)
    e = Engine(*tiny, max_batch=4, max_queue=8)
    try:
        e.pause()
        long = e.submit(Request([[5, 6, 7]], 3, SeqParams(max_tokens=300, temperature=0, ignore_eos=True)))
        e.resume()
        while len(e.rows) < 3:
            time.sleep(0.005)
        e.pause()  # the next two wait together, then the first one's client leaves
        gone = e.submit(Request([[8, 9]], 4, SeqParams(max_tokens=5, ignore_eos=True)))
        short = e.submit(Request([[8, 9]], 1, SeqParams(max_tokens=4, temperature=0, ignore_eos=True)))
        gone.cancel()
        e.resume()
        assert [r for _, _, r in collect(short).values()] == ["length"]
        assert e.steps < 100 and [r for _, _, r in collect(gone).values()] == ["cancelled"] * 4
        long.cancel()
    finally:
        e.close()


def test_the_queue_depth_is_read_while_the_scheduler_admits(tiny):
    # it iterated the deque the scheduler thread pops from: "deque mutated during iteration" (/health, /metrics)
    e = Engine(*tiny, max_batch=1, max_queue=4000)
    try:
        e.pause()
        reqs = [e.submit(Request([[5]], 1, SeqParams(max_tokens=1))) for _ in range(300)]
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # hand the GIL back and forth often: the reads interleave with the pops
        e.resume()
        while e.queue_depth:
            pass
        for r in reqs:
            collect(r)
    finally:
        sys.setswitchinterval(switch)
        e.close()


def test_a_stop_string_spelling_a_special_token_stops_a_request_that_keeps_them(tiny):
    # stop strings were looked for in text decoded without special tokens whatever the request kept, so with
    # skip_special_tokens false the answer's text was cut at "<|im_end|>" but decoding ran on to max_tokens
    from alignlab.rollout.scheduler import _stop_hit
    from alignlab.serve.protocol import parse_job

    _, tok = tiny
    eos = tok.convert_ids_to_tokens(tok.eos_token_id)
    assert _stop_hit(tok, [eos], [5, 6, tok.eos_token_id], skip_special=False)
    assert not _stop_hit(tok, [eos], [5, 6, tok.eos_token_id])
    job = parse_job({"prompt": "hi", "stop": [eos], "skip_special_tokens": False, "temperature": 1e-40}, False,
                    default_max=16, max_tokens_limit=64, max_n=4)
    assert job.params.skip_special is False
    assert job.params.temperature == 0  # 1e-40 overflowed logits / T: token 0 forever with NaN log-probs (vLLM: greedy)
