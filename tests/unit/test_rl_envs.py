"""Multi-turn environments: the safe calculator evaluator, tool-call parsing, the env protocol (calculator
and python), and the token bookkeeping that keeps sampled ids exact and masks non-generated tokens."""

import json
import math
import time

import pytest

from alignlab.errors import AlignlabError
from alignlab.rl.envs import Segment, assemble, continuation_text, get_env, parse_tool_calls
from alignlab.rl.envs.calculator import format_number, safe_eval
from alignlab.rollout.sandbox import SandboxLimits


@pytest.mark.parametrize("expr, value", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("7 / 2", 3.5), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 10", 1024),
    ("-3 + +5", 2), ("sqrt(16)", 4.0), ("max(1, 5, 3)", 5), ("round(2.567, 2)", 2.57), ("1.5e3", 1500.0),
    ("2 ** -1", 0.5),
])
def test_safe_eval_arithmetic(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr, reason", [
    ("().__class__.__bases__", "not allowed"),           # attribute access
    ("__import__('os').system('ls')", "not allowed"),    # calls outside the whitelist
    ("open('/etc/passwd')", "not allowed"),
    ("x + 1", "not allowed"),                             # names
    ("'a' * 3", "only numbers"),                          # strings
    ("[1, 2][0]", "not allowed"),                         # subscripts / lists
    ("lambda: 1", "not allowed"),
    ("9 ** 9 ** 9", "too large"),                         # huge power, refused before computing
    ("10 ** 999 * 10 ** 999", "too large"),               # huge product
    ("2.0 ** 5000", "too large"),
    ("round(5, -10 ** 9)", "round"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "complex"),
    ("2 ^ 3", "write \\*\\*"),
    ("1,000 + 1", "not allowed"),                         # a tuple
    ("1 +", "not a valid expression"),
    ("1" + " + 1" * 200, "longer than"),
    ("", "empty"),
])
def test_safe_eval_rejects(expr, reason):
    start = time.monotonic()
    with pytest.raises(ValueError, match=reason):
        safe_eval(expr)
    assert time.monotonic() - start < 1.0


def test_format_number():
    assert format_number(14.0) == "14" and format_number(3.5) == "3.5" and format_number(7) == "7"
    assert format_number(1 / 3) == "0.3333333333"
    assert not math.isnan(float(format_number(2.0 ** 0.5)))


def test_parse_tool_calls():
    text = ('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"3\\"}"}</tool_call>'
            '<tool_call>not json</tool_call><tool_call>{"arguments": {}}</tool_call>')
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error is None) for c in calls[:2]] == [
        ("calculator", {"expression": "2+2"}, True), ("calculator", {"expression": "3"}, True)]
    assert "JSON" in calls[2].error and "name" in calls[3].error
    assert parse_tool_calls("The answer is \\boxed{4}.") == []


def _tool_call(expression: str) -> str:
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


def test_calculator_episode_tool_then_correct_answer():
    env = get_env("calculator", max_turns=4)
    messages = env.reset({"question": "Janet has 16 eggs, eats 3, bakes 4, sells the rest at $2.",
                          "answer": "... #### 18"})
    assert [m["role"] for m in messages] == ["system", "user"] and "<tool_call>" in messages[0]["content"]
    turn = "Remaining eggs: " + _tool_call("(16 - 3 - 4) * 2")
    messages.append({"role": "assistant", "content": turn})
    res = env.step(messages, turn)
    assert not res.done and res.reward == 0.0
    assert res.observation == {"role": "tool", "content": "18"}
    messages += [res.observation, {"role": "assistant", "content": "She makes \\boxed{18} dollars."}]
    res = env.step(messages, "She makes \\boxed{18} dollars.")
    assert res.done and res.observation is None and res.reward == 1.0
    assert res.info == {"turns": 2, "tool_calls": 1, "tool_errors": 0}


def test_calculator_episode_errors_wrong_answer_and_turn_limit():
    env = get_env("calculator", max_turns=2)
    env.reset({"question": "What is 6 * 7?", "answer": "42"})
    bad = env.step([], _tool_call("__import__('os')") + '<tool_call>{"name": "search", "arguments": {}}</tool_call>')
    assert not bad.done and bad.observation["content"].count("error:") == 2
    assert "unknown tool 'search'" in bad.observation["content"]
    last = env.step([], "I will compute " + _tool_call("6*7"))  # turn 2 of 2: the episode ends here
    assert last.done and last.reward == 0.0 and last.info["tool_errors"] == 2
    env.reset({"question": "What is 6 * 7?", "answer": "42"})
    assert env.step([], "\\boxed{41}").reward == 0.0
    with pytest.raises(AlignlabError, match="'question'"):
        env.reset({"prompt": "x"})
    with pytest.raises(AlignlabError, match="unknown environment"):
        get_env("chess")


def test_python_tool_env_runs_code_in_the_sandbox(monkeypatch):
    monkeypatch.setenv("ALIGNLAB_TEST_SECRET", "s3cr3t")
    env = get_env("python", timeout_s=2.0)
    env.reset({"question": "What is 2**20?", "answer": "1048576"})
    call = '<tool_call>{"name": "python", "arguments": {"code": "import os\\nprint(2**20, os.environ.get(\'ALIGNLAB_TEST_SECRET\'))"}}</tool_call>'
    res = env.step([], call)
    assert res.observation["content"].strip() == "1048576 None"
    loop = '<tool_call>{"name": "python", "arguments": {"code": "while True: pass"}}</tool_call>'
    assert "timed out" in env.step([], loop).observation["content"]  # wall clock or CPU limit, whichever is first
    env.limits = SandboxLimits(timeout_s=30.0, cpu_s=1)  # the CPU limit first: SIGXCPU reads as a time-out too
    assert "timed out after 1 s of CPU" in env.step([], loop).observation["content"]
    assert env.step([], "\\boxed{1048576}").reward == 1.0
    # the sandbox's own kill for filling its scratch directory read as a CPU time-out
    env.limits = SandboxLimits(timeout_s=30.0, disk_mb=8)
    env.reset({"question": "Fill the disk.", "answer": "0"})
    code = "import time\nfor i in range(4):\n    open(f'f{i}', 'wb').write(b'x' * 6 * 2**20)\ntime.sleep(20)"
    fill = json.dumps({"name": "python", "arguments": {"code": code}})
    reply = env.step([], f"<tool_call>{fill}</tool_call>").observation["content"]
    assert reply.startswith("error: killed: the scratch directory went over 8 MiB") and "timed out" not in reply
    # a failed run is a tool error, as a calculator's is (tool_errors counted none of them)
    assert env.tool_errors == 1  # reset() started the count again
    crash = json.dumps({"name": "python", "arguments": {"code": "print(1 / 0)"}})
    assert env.step([], f"<tool_call>{crash}</tool_call>").observation["content"].startswith("error: exit status 1:")
    assert env.tool_errors == 2


def test_assemble_masks_only_generated_tokens():
    segs = [Segment((1, 2, 3), False), Segment((10, 11), True), Segment((4, 5), False), Segment((12,), True)]
    ids, mask = assemble(segs)
    assert ids == [1, 2, 3, 10, 11, 4, 5, 12]
    assert mask == [0, 0, 0, 1, 1, 0, 0, 1]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from alignlab.models.load import load_tokenizer

    return load_tokenizer("tiny-random")


def test_multi_turn_tokens_keep_sampled_ids_and_render_the_conversation(tiny_tokenizer):
    """Build a 2-turn calculator episode at the token level: the sampled ids stay exactly as sampled,
    the inserted template/tool text is masked, and the whole decodes to what the chat template renders
    for the same conversation."""
    tok = tiny_tokenizer
    env = get_env("calculator")
    prompt = env.reset({"question": "What is 6 * 7?", "answer": "42"})
    first = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    segs = [Segment(tuple(tok(first, add_special_tokens=False)["input_ids"]), False)]
    eos = tok.eos_token
    turn1 = _tool_call("6*7")
    sampled1 = tuple(tok(turn1 + eos, add_special_tokens=False)["input_ids"])  # as if the sampler drew it
    segs.append(Segment(sampled1, True))
    obs = env.step(prompt + [{"role": "assistant", "content": turn1}], turn1).observation
    delta = continuation_text(tok, prompt, turn1, tok.decode(list(sampled1)), [obs])
    assert delta.startswith("\n") and "42" in delta  # closes the turn, the tool reply, the next prompt
    segs.append(Segment(tuple(tok(delta, add_special_tokens=False)["input_ids"]), False))
    turn2 = "\\boxed{42}"
    sampled2 = tuple(tok(turn2 + eos, add_special_tokens=False)["input_ids"])
    segs.append(Segment(sampled2, True))
    ids, mask = assemble(segs)
    assert [t for t, m in zip(ids, mask) if m] == list(sampled1 + sampled2)
    conversation = prompt + [{"role": "assistant", "content": turn1}, obs, {"role": "assistant", "content": turn2}]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert tok.decode(ids) == rendered.rstrip("\n")
    assert env.step(conversation, turn2).reward == 1.0


def test_continuation_text_refuses_a_template_that_rewrites_the_turn(tiny_tokenizer):
    with pytest.raises(AlignlabError, match="prefix"):
        continuation_text(tiny_tokenizer, [{"role": "user", "content": "hi"}], "hello", "HELLO", [])


class _ScriptedPolicy:
    """Stands in for the sampler: answers each episode (found by its question in the context) with the
    next scripted turn, as token ids ending in EOS, log-prob -0.5 per token; records every context."""

    def __init__(self, tok, script):
        self.tok, self.script, self.calls = tok, {q: list(turns) for q, turns in script.items()}, []

    def __call__(self, contexts, ids):
        from types import SimpleNamespace

        assert len(ids) == len(contexts)
        self.calls.append([list(c) for c in contexts])
        outs = []
        for ctx in contexts:
            question = next(q for q in self.script if q in self.tok.decode(ctx))
            ids = self.tok(self.script[question].pop(0) + self.tok.eos_token, add_special_tokens=False)["input_ids"]
            outs.append(SimpleNamespace(completion_ids=ids, finish_reason="eos", logprobs=[-0.5] * len(ids)))
        return outs


def test_run_episodes_batches_turns_keeps_ids_and_masks(tiny_tokenizer):
    from alignlab.rl.envs.episode import padded_loss_mask, run_episodes

    tok = tiny_tokenizer
    rows = [{"question": "What is 6 * 7?", "answer": "42"}, {"question": "What is 2 + 2?", "answer": "4"}]
    policy = _ScriptedPolicy(tok, {"6 * 7": [_tool_call("6*7"), "It is \\boxed{42}"],
                                   "2 + 2": ["\\boxed{5}"]})
    eps = run_episodes(lambda: get_env("calculator"), rows, tok, policy, max_response_tokens=400)
    assert [len(c) for c in policy.calls] == [2, 1]  # turn 1 batched both episodes; turn 2 only the first
    first, second = eps
    assert (first.reward, first.done, first.truncated, first.info["tool_calls"]) == (1.0, True, False, 1)
    assert (second.reward, second.done) == (0.0, True)
    # The second turn's context is exactly prompt + sampled ids + inserted ids of the first turn.
    assert policy.calls[1][0] == first.prompt_ids + list(first.segments[0].ids) + list(first.segments[1].ids)
    ids, mask = first.response_ids, first.loss_mask
    assert len(ids) == len(mask) == len(first.logprobs)
    assert all((lp == -0.5) == bool(m) for lp, m in zip(first.logprobs, mask))
    assert [s.generated for s in first.segments] == [True, False, True]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert first.messages[3]["content"] == "42"
    padded = padded_loss_mask(eps)
    assert padded.shape == (2, len(first.loss_mask)) and padded[0].tolist() == [float(m) for m in first.loss_mask]
    assert padded[1, len(second.loss_mask):].sum() == 0 and first.completion_ids == first.response_ids


def test_run_episodes_token_budget_truncates(tiny_tokenizer):
    from alignlab.rl.envs.episode import run_episodes

    tok = tiny_tokenizer
    policy = _ScriptedPolicy(tok, {"6 * 7": [_tool_call("6*7"), "\\boxed{42}"]})
    first_turn = len(policy.tok(_tool_call("6*7") + tok.eos_token, add_special_tokens=False)["input_ids"])
    (ep,) = run_episodes(lambda: get_env("calculator"), [{"question": "What is 6 * 7?", "answer": "42"}], tok,
                         policy, max_response_tokens=first_turn)  # the model's own tokens used it up
    assert ep.truncated and not ep.done and ep.reward == 0.0 and len(policy.calls) == 1
    # the tool's reply and the template around it do not count against the model's budget (they ended episodes
    # whose model tokens were well within it)
    policy = _ScriptedPolicy(tok, {"6 * 7": [_tool_call("6*7"), "\\boxed{42}"]})
    (ep,) = run_episodes(lambda: get_env("calculator"), [{"question": "What is 6 * 7?", "answer": "42"}], tok,
                         policy, max_response_tokens=first_turn + 1)
    inserted = sum(len(seg.ids) for seg in ep.segments if not seg.generated)
    assert inserted > 1 and ep.done and not ep.truncated and ep.reward == 1.0


def test_a_special_token_inside_a_tool_call_turn_ends_that_episode_alone(tiny_tokenizer):
    # the message content drops it (skip_special_tokens), so no render continues the sampled ids: the prefix check
    # raised and stopped the whole RL run
    from alignlab.rl.envs.episode import run_episodes

    tok = tiny_tokenizer
    policy = _ScriptedPolicy(tok, {"6 * 7": ["<|im_start|>" + _tool_call("6*7")], "2 + 2": ["\\boxed{4}"]})
    rows = [{"question": "What is 6 * 7?", "answer": "42"}, {"question": "What is 2 + 2?", "answer": "4"}]
    bad, good = run_episodes(lambda: get_env("calculator"), rows, tok, policy, max_response_tokens=400)
    assert bad.truncated and bad.reward == 0.0 and (good.done, good.reward) == (True, 1.0)


SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
            "altogether in April and May.\n#### 72")


def test_gsm8k_solution_becomes_the_calculator_episode_it_describes():
    """Each <<expr=value>> ends an assistant turn with a calculator call; replaying the transcript through
    CalculatorEnv gives back its tool messages and reward 1 for the boxed final answer."""
    from alignlab.rl.envs.calculator import gsm8k_transcript

    msgs = gsm8k_transcript("How many clips?", SOLUTION)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert msgs[2]["content"] == f"Natalia sold 48/2 =\n{_tool_call('48/2')}"
    assert msgs[3]["content"] == "24" and msgs[5]["content"] == "72"
    assert msgs[6]["content"] == "72 clips altogether in April and May.\n\\boxed{72}"
    env = get_env("calculator", max_turns=4)
    assert env.reset({"question": "How many clips?", "answer": SOLUTION}) == msgs[:2]
    for i in (2, 4, 6):
        res = env.step(msgs[:i + 1], msgs[i]["content"])
        assert (res.observation == msgs[i + 1]) if i < 6 else (res.done and res.reward == 1.0)
    assert gsm8k_transcript("q", SOLUTION, max_turns=2) is None  # 3 turns needed
    assert gsm8k_transcript("q", SOLUTION.replace("=72>>", "=73>>")) is None  # annotation the calculator contradicts
    assert gsm8k_transcript("q", "no final answer") is None
    plain = gsm8k_transcript("How many clips?", SOLUTION, tool=False)
    assert plain[:2] == msgs[:2] and len(plain) == 3
    assert plain[2]["content"] == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in "
                                   "April and May.\n\\boxed{72}")
    env = get_env("calculator", max_turns=4)
    env.reset({"question": "How many clips?", "answer": SOLUTION})
    res = env.step(plain, plain[2]["content"])
    assert res.done and res.reward == 1.0
    assert gsm8k_transcript("q", SOLUTION, max_turns=2, tool=False) is None  # left out by the same rules


def test_tool_transcripts_command_writes_conversations_and_names_a_bad_record(tmp_path, capsys):
    import json

    from alignlab.cli import main

    src = tmp_path / "gsm.jsonl"
    src.write_text(json.dumps({"question": "q1", "answer": SOLUTION}) + "\n"
                   + json.dumps({"question": "q2", "answer": "2+2 = <<2+2=5>>5\n#### 5"}) + "\n")
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["messages"][1] == {"role": "user", "content": "q1"}
    assert "left out 1" in capsys.readouterr().err
    src.write_text(json.dumps({"question": "q1", "answer": SOLUTION}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "out2.jsonl")]) == 2
    assert "gsm.jsonl: record 1 (line 2): no text field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "out2.jsonl").exists()
    src.write_text("".join(json.dumps({"question": f"q{i}", "answer": SOLUTION}) + "\n" for i in range(40)))
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "mixed.jsonl"), "--no-tool-share", "0.5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    n_plain = sum(len(r["messages"]) == 3 for r in rows)
    assert f"({n_plain} without tool calls)" in capsys.readouterr().err and 10 <= n_plain <= 30
    # a solution without an annotated calculation has no tool call at share 0 either: the count said 0
    src.write_text(json.dumps({"question": "q1", "answer": SOLUTION}) + "\n"
                   + json.dumps({"question": "q2", "answer": "Two and two make four.\n#### 4"}) + "\n")
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "plain.jsonl")]) == 0
    assert "wrote 2 conversations (1 without tool calls)" in capsys.readouterr().err
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "x.jsonl"), "--no-tool-share", "1.5"]) == 2
    # a negative limit was truthy: one conversation written, exit 0
    assert main(["data", "tool-transcripts", str(src), str(tmp_path / "x.jsonl"), "--limit", "-1"]) == 2
    assert "--limit must be >= 0" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_a_ranks_episodes_are_sampled_as_in_one_process(tiny_tokenizer):
    """Data parallelism: rank 1 of 2 plays the second prompt's episodes with its offset into the global batch and
    draws what one process playing both prompts draws for them (per-row keys by global episode index)."""
    import contextlib
    from types import SimpleNamespace

    from alignlab.models.load import load_model
    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.rl.multiturn import play

    cfg = PolicyGradientConfig(env="calculator", max_turns=2, reward="math", max_new_tokens=10, num_generations=2)
    state = SimpleNamespace(cfg=cfg, policy=load_model("tiny-random", device="cpu"), tokenizer=tiny_tokenizer,
                            compute=lambda cache: contextlib.nullcontext(), reward_fn=lambda p, c, **kw: [0.0])
    rows = [SimpleNamespace(chat=True, prompt=[{"role": "user", "content": f"What is {i} + 1?"}], answer=str(i + 1))
            for i in range(2)]

    def sampling(turn):
        return dict(temperature=1.0, seed=7 + turn, per_row_seed=True)

    one = play(state, rows, 2, sampling)
    rank1 = play(state, rows[1:], 2, sampling, first=2)
    rank1_without_offset = play(state, rows[1:], 2, sampling)
    assert [e.response_ids for e in rank1] == [e.response_ids for e in one[2:]]
    assert [e.response_ids for e in rank1_without_offset] != [e.response_ids for e in one[2:]]


def test_a_bad_calculation_or_tool_call_is_an_error_message_not_a_crash():
    """0 ** -1 raised ZeroDivisionError out of the evaluator, and thousands of nested brackets a RecursionError out
    of the JSON parser: either ended the rollout. Both come back to the model as tool errors."""
    with pytest.raises(ValueError, match="zero to a negative power"):
        safe_eval("0 ** -1")
    (call,) = parse_tool_calls("<tool_call>" + "[" * 3000 + "</tool_call>")
    assert call.error == "tool call is nested too deeply"
    # an integer past Python's 4,300-digit limit raised a plain ValueError out of the parser
    big = "9" * 5000
    (call,) = parse_tool_calls(f'<tool_call>{{"name": "calculator", "arguments": {{"x": {big}}}}}</tool_call>')
    assert call.error.startswith("tool call is not valid JSON: Exceeds the limit")
    args = json.dumps(f'{{"x": {big}}}')
    (call,) = parse_tool_calls(f'<tool_call>{{"name": "calculator", "arguments": {args}}}</tool_call>')
    assert call.error == "tool call arguments must be a JSON object"


def _turns(tok, script, cut=()):
    """A sampler answering each episode with its next scripted turn; turns listed in `cut` end as the sampler's
    token limit cuts them (finish_reason "length", no EOS)."""
    from types import SimpleNamespace

    def sample(contexts, ids):
        outs = []
        for ctx in contexts:
            question = next(q for q in script if q in tok.decode(ctx))
            text = script[question].pop(0)
            ids = tok(text if text in cut else text + tok.eos_token, add_special_tokens=False)["input_ids"]
            outs.append(SimpleNamespace(completion_ids=ids, finish_reason="length" if text in cut else "eos",
                                        logprobs=None))
        return outs

    return sample


def test_a_final_turn_cut_at_the_token_limit_is_a_truncated_answer(tiny_tokenizer):
    # scored as a finished answer: truncated_frac read 0 and mask_truncated kept it in env runs
    from alignlab.rl.envs.episode import run_episodes

    cut = "6*7 is 42 but wait, let me"
    sample = _turns(tiny_tokenizer, {"6 * 7": [cut], "2 + 2": ["\\boxed{4}"]}, cut=(cut,))
    rows = [{"question": "What is 6 * 7?", "answer": "42"}, {"question": "What is 2 + 2?", "answer": "4"}]
    first, second = run_episodes(lambda: get_env("calculator"), rows, tiny_tokenizer, sample, max_response_tokens=400)
    assert (first.done, first.truncated, first.finish_reason, first.reward) == (True, True, "length", 1.0)
    assert (second.done, second.truncated, second.finish_reason) == (True, False, "stop")


def test_a_turn_a_trimming_template_cannot_continue_ends_that_episode_alone(tiny_tokenizer):
    # Llama 3's and Gemma's templates trim a message's content: one sampled turn starting with a space raised the
    # prefix error out of run_episodes and ended the whole RL run
    import copy

    from alignlab.rl.envs.episode import run_episodes

    tok = copy.deepcopy(tiny_tokenizer)  # the fixture is shared by the module
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    sample = _turns(tok, {"6 * 7": [" " + _tool_call("6*7")], "2 + 2": [_tool_call("2+2"), "\\boxed{4}"]})
    rows = [{"question": "What is 6 * 7?", "answer": "42"}, {"question": "What is 2 + 2?", "answer": "4"}]
    bad, good = run_episodes(lambda: get_env("calculator"), rows, tok, sample, max_response_tokens=400)
    assert (bad.truncated, bad.done, bad.reward) == (True, False, 0.0)
    assert (good.done, good.truncated, good.reward, good.info["tool_calls"]) == (True, False, 1.0, 1)


def test_env_runs_score_with_the_runs_reward_and_cut_long_prompts(tiny_tokenizer):
    """The environment scored with get_reward(cfg.reward): reward_weights, reward_options and a Python callable
    (alignlab.grpo(reward=fn, env=...): "unknown reward '<python fn>'") never reached it; max_prompt_length did not
    cut an episode's opening prompt."""
    import contextlib
    from types import SimpleNamespace

    from alignlab.config import ConfigError
    from alignlab.models.load import load_model
    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.rl.multiturn import play
    from alignlab.rollout.encode import encode_prompt

    seen = []

    def reward(prompts, completions, answer):
        seen.append(answer)
        return [7.0] * len(completions)

    cfg = PolicyGradientConfig(env="calculator", max_turns=1, reward="math", max_new_tokens=4, max_prompt_length=24)
    state = SimpleNamespace(cfg=cfg, policy=load_model("tiny-random", device="cpu"), tokenizer=tiny_tokenizer,
                            compute=lambda cache: contextlib.nullcontext(), reward_fn=reward)
    rows = [SimpleNamespace(chat=True, prompt=[{"role": "user", "content": f"What is {i} + 1?"}], answer=str(i + 1))
            for i in range(2)]
    episodes = play(state, rows, 1, lambda turn: dict(seed=turn))
    assert [e.reward for e in episodes] == [7.0, 7.0] and seen == [["1"], ["2"]]
    full = encode_prompt(tiny_tokenizer, episodes[0].messages[:2])
    assert len(full) > 24 and episodes[0].prompt_ids == full[-24:]
    with pytest.raises(ConfigError, match="env_options: reward and max_turns are the run's top-level keys"):
        PolicyGradientConfig(env="calculator", env_options={"reward": "gsm8k"}).validate()
