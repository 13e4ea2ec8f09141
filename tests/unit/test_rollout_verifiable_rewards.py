"""The math and judge rewards and weighted reward lists (the code reward is in test_rollout_sandbox)."""

import json

import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.judges import FunctionJudge, LLMJudge
from alignlab.rollout.rewards import WeightedReward, get_reward, reward_names
from alignlab.rollout.verify_math import extract_final_answer, math_equal


def test_new_rewards_are_registered():
    assert {"math", "code", "judge"} <= set(reward_names())


@pytest.mark.parametrize("text, answer", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}} end", "\\frac{\\sqrt{2}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("The answer is 1,000 apples.", "1,000 apples"),
    ("3 + 4 = 7, then 7 * 2 = 14", "14"),
    ("no digits here", None),
])
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


@pytest.mark.parametrize("pred, ref, equal", [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("x^2+1", "1+x^2", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("18 dollars", "18", True),
    ("1,000", "1000", True),
    ("x^2+1", "1", False),
    ("0.49", "0.5", False),
    (None, "1", False),
])
def test_math_equal_is_symbolic(pred, ref, equal):
    assert math_equal(pred, ref) is equal


def test_math_reward_on_gsm8k_style_rows():
    fn = get_reward("math")
    refs = ["Janet ... 16 - 3 - 4 = 9 eggs.\n#### 18", "#### 1,000", "\\frac{2}{3}"]
    completions = ["She makes 9 * 2 = $18 every day.", "It costs \\boxed{1000}.", "The answer is 0.6667"]
    assert fn(["q"] * 3, completions, answer=refs) == [1.0, 1.0, 0.0]
    with pytest.raises(AlignlabError, match="'answer'"):
        fn(["q"], ["1"])


def test_math_reward_agrees_with_gsm8k_on_real_references(data_dir):
    """On real GSM8K references, a completion ending in the gold number scores 1 with both rewards and
    one ending in gold + 1 scores 0 with both."""
    path = data_dir / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K test split not found at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:20]]
    refs = [r["answer"] for r in rows]
    gold = [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in rows]
    right = [f"Reasoning...\n#### {g}" for g in gold]
    wrong = [f"Reasoning...\n#### {float(g) + 1:g}" for g in gold]
    for name in ("math", "gsm8k"):
        fn = get_reward(name)
        assert fn(["q"] * len(rows), right, answer=refs) == [1.0] * len(rows)
        assert fn(["q"] * len(rows), wrong, answer=refs) == [0.0] * len(rows)


def test_weighted_reward_list():
    fn = get_reward(["math", "format"], weights=[1.0, 0.2], format={"pattern": r"\\boxed"})
    assert isinstance(fn, WeightedReward)
    out = fn(["q", "q"], ["\\boxed{4}", "4"], answer=["4", "5"])
    assert out == pytest.approx([1.2, 0.0])
    assert fn.last_components == {"math": [1.0, 0.0], "format": [1.0, 0.0]}
    assert get_reward(["math", "format"])(["q"], ["#### 4"], answer=["4"]) == [2.0]
    with pytest.raises(AlignlabError, match="reward_weights"):
        get_reward(["math", "format"], weights=[1.0])
    with pytest.raises(AlignlabError, match="do not name"):
        get_reward(["math"], gsm8k={})
    with pytest.raises(AlignlabError, match="one reward"):
        get_reward("math", weights=[1.0])


class _ScriptedBackend:
    """Stands in for an external LLM endpoint: replies from a table, counts requests."""

    def __init__(self, replies):
        self.replies, self.requests = replies, 0

    def chat_many(self, conversations):
        self.requests += len(conversations)
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            out.append(next((r for key, r in self.replies.items() if key in text), "no idea"))
        return out


def test_judge_reward_pointwise_llm_scales_and_caches():
    """Ratings [[10]] -> 1.0, [[1]] -> 0.0, unparsable -> failed_value (not cached, asked again)."""
    backend = _ScriptedBackend({"GOOD": "Rating: [[10]]", "BAD": "Rating: [[1]]"})
    fn = get_reward("judge", judge=LLMJudge(backend, mode="single"), mode="pointwise")
    out = fn(["q", "q", "q", "q"], ["GOOD", "BAD", "GOOD", "???"])
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert backend.requests == 3  # the duplicate GOOD was judged once
    assert fn(["q", "q"], ["GOOD", "???"]) == [1.0, 0.0]
    assert backend.requests == 4  # GOOD from the cache; the failure is asked again
    assert fn.failures == 2 and fn.hits == 2
    # a hit the batch's own new entries evicted (cache smaller than the batch) scored failed_value
    small = get_reward("judge", judge=LLMJudge(_ScriptedBackend({"A": "[[10]]", "B": "[[10]]", "C": "[[10]]",
                                                                 "D": "[[10]]"}), mode="single"), cache_size=2)
    assert small(["q"] * 2, ["A", "B"]) == [1.0, 1.0]
    assert small(["q"] * 3, ["A", "C", "D"]) == [1.0, 1.0, 1.0] and small.failures == 0


def test_judge_reward_pairwise_against_reference():
    """A function judge comparing lengths (hard): longer than the reference wins (1), equal ties (0.5)."""
    judge = FunctionJudge(lambda prompts, completions, **_: [float(len(c)) for c in completions])
    fn = get_reward("judge", judge=judge, mode="pairwise")
    out = fn(["q"] * 3, ["long answer", "abc", "a"], reference=["short", "xyz", "ab"])
    assert out == [1.0, 0.5, 0.0]
    with pytest.raises(AlignlabError, match="'reference'"):
        fn(["q"], ["a"])
    with pytest.raises(AlignlabError, match="judge"):
        get_reward("judge")
    with pytest.raises(AlignlabError, match="cannot grade one answer"):
        get_reward("judge", judge=judge, mode="pointwise")


def test_plain_numbers_respect_thousands_groups():
    assert math_equal("1,000", "1000") and not math_equal("1,2", "12")
    assert math_equal("12,345.5 m", "12345.5")


def test_large_answers_are_compared_exactly():
    """A tolerance relative to the reference's size passed GSM8K's 1450001 for 1450000 in both rewards (math-verify
    rounds floats to 6 decimals and says no)."""
    for pred, ref in (("1450001", "1450000"), ("12345690", "12345678"), ("999999", "1000000")):
        assert not math_equal(pred, ref)
        assert get_reward("gsm8k")(["q"], [f"#### {pred}"], answer=[f"#### {ref}"]) == [0.0]
    assert math_equal("2.0000001", "2") and math_equal("1450000.0", "1,450,000")


def test_a_bare_latex_reference_is_the_answer_and_a_lone_letter_is_not_a_unit():
    """MATH-style references are bare LaTeX: '\\frac{2}{3}' is the answer, not its last number 3 (which made
    \\boxed{3} right and \\boxed{2/3} wrong). After a number, a word of two letters or more is a unit ('1000
    apples'); a lone letter or a constant is part of the answer ('2x' is not 2, '4 pi' is not 4)."""
    from alignlab.rollout.verify_math import make_math_reward

    reward = make_math_reward()
    pairs = [("\\boxed{2/3}", "\\frac{2}{3}", 1.0), ("\\boxed{3}", "\\frac{2}{3}", 0.0),
             ("\\boxed{0.5}", "\\frac{1}{2}", 1.0), ("\\boxed{2}", "3\\sqrt{2}", 0.0),
             ("\\boxed{2}", "\\boxed{2x}", 0.0), ("\\boxed{4}", "\\boxed{4 pi}", 0.0),
             ("\\boxed{1000 apples}", "1,000", 1.0), ("so #### 72", "Natalia ... #### 72", 1.0),
             # a trailing comma was kept ("18,": 0); letters written on are a unit only when they are one ("5xy")
             ("She makes 9 * 2 = $18, every day.", "#### 18", 1.0), ("It costs $1,250, so", "1250", 1.0),
             ("\\boxed{5xy}", "5", 0.0), ("\\boxed{3ab}", "3xy", 0.0), ("\\boxed{5cm}", "5", 1.0),
             ("\\boxed{18dollars}", "18", 1.0), ("\\boxed{20GB}", "20", 1.0), ("\\boxed{2nd}", "2", 1.0)]
    got = reward(["q"] * len(pairs), [c for c, _, _ in pairs], answer=[r for _, r, _ in pairs])
    assert got == [w for _, _, w in pairs]


def test_exiting_early_with_status_zero_does_not_pass_the_tests():
    """Success used to be the exit status alone: `sys.exit(0)` or `os._exit(0)` before the appended asserts scored
    1 on any task. The asserts now pass only when the harness's nonce (unknown to the program) is printed after
    them."""
    from alignlab.rollout.code_reward import make_code_reward

    reward = make_code_reward()
    tests = "assert add(2, 3) == 5"
    programs = ["def add(a, b):\n    return a + b\n", "import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                "def add(a, b):\n    return a - b\n"]
    got = reward(["q"] * 4, [f"```python\n{p}```" for p in programs], tests=[tests] * 4)
    assert got == [1.0, 0.0, 0.0, 0.0]
    assert reward(["q"], ["```python\nimport sys\nsys.exit(0)\n```"], tests=[[tests, tests]]) == [0.0]


def test_assert_tests_read_the_program_as_written_and_cannot_be_passed_around():
    """The harness was text put before the program: a program opening with `from __future__ import annotations`
    was a SyntaxError (0 for a right answer), more than 64 KiB of prints pushed the nonce past the output cap (0),
    and a wrong program passed by calling the harness's global function or reading the nonce's stdin file."""
    from alignlab.rollout.code_reward import make_code_reward

    reward = make_code_reward()
    tests = "assert add(2, 3) == 5"
    right = "def add(a: int, b: int) -> int:\n    return a + b\n"
    programs = ["from __future__ import annotations\n" + right,
                right + "for i in range(20000):\n    print('debugging line', i)\n",
                "import os, sys\n__alignlab_done(); sys.stdout.flush(); os._exit(0)\n",
                "import glob, os, sys\nfor f in glob.glob('/tmp/alignlab-sbx-io-*/stdin'):\n"
                "    sys.stdout.write('\\n' + open(f).read().strip() + '\\n')\n"
                "sys.stdout.write('\\n' + os.pread(0, 100, 0).decode().strip() + '\\n')\nsys.stdout.flush()\nos._exit(0)\n"]
    got = reward(["q"] * 4, [f"```python\n{p}```" for p in programs], tests=[tests] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]
    # the driver's exec and os.write are its own, and the tests are in no file: a program replacing the builtins,
    # leaving a trace function to jump over the tests, or reading them from main.py to fake the answers got 1
    hacks = ["import builtins\nbuiltins.exec = lambda *a: None\n", "import builtins\nbuiltins.compile = lambda *a: None\n",
             "import sys\ndef skip(frame, event, arg):\n    if event == 'line' and frame.f_code.co_filename == 'tests.py':\n"
             "        frame.f_lineno += 1\n    return skip\nsys.settrace(skip)\ndef add(a, b):\n    return 0\n",
             "src = open('main.py').read()\nadd = (lambda a, b: 5) if 'add(2, ' + '3) == 5' in src else None\n"]
    assert reward(["q"] * 4, [f"```python\n{p}```" for p in hacks], tests=[tests] * 4) == [0.0] * 4
    # run as a module of its own: doctest and unittest find their tests there (in a bare dict they found none and
    # passed a wrong program), and __file__, sys.stdout's buffer and fileno, pickle and inspect work as in a script
    doc = 'def add(a, b):\n    """\n    >>> add(2, 3)\n    5\n    """\n    return a {} b\n'
    doctests = "import doctest\nassert doctest.testmod().failed == 0"
    unit = ("import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(add(2, 3), 5)\n"
            "r = unittest.main(exit=False).result\nassert r.wasSuccessful()")
    assert reward(["q"] * 4, [doc.format("+"), doc.format("-"), doc.format("+"), doc.format("-")],
                  tests=[doctests, doctests, unit, unit]) == [1.0, 0.0, 1.0, 0.0]
    script = ("import os, sys, pickle, inspect\ndef add(a, b):\n    return a + b\nclass P:\n    pass\n"
              "sys.stdout.buffer.write(b'x')\nos.write(sys.stdout.fileno(), b'y')\nassert os.path.basename(__file__)\n"
              "pickle.dumps(P())\nassert 'return a + b' in inspect.getsource(add)\n")
    assert reward(["q"], [script], tests=[tests]) == [1.0]
    # stdin/stdout cases longer than the output cap compare in full
    n = 20000
    io = [{"input": str(n), "output": "\n".join(str(i) for i in range(n)) + "\n"}]
    assert len(io[0]["output"]) > 65536
    count = "n = int(input())\nfor i in range(n):\n    print(i)\n"
    assert reward(["q"] * 2, [count, count.replace("range(n)", "range(n - 1)")], tests=[io, io]) == [1.0, 0.0]
    # a blank or JSON-text test asserts nothing: any program passed it
    for bad in ("", "  \n", '[{"input": "1", "output": "2"}]'):
        with pytest.raises(AlignlabError, match="row 0: tests is"):
            reward(["q"], ["x = 1"], tests=[bad])
    with pytest.raises(AlignlabError, match="cpu_s, memory_mb must be whole numbers"):
        make_code_reward(cpu_s=2.5, memory_mb=1536.0)  # setrlimit refused them: every program scored 0
