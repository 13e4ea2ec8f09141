"""The `code` reward: run the completion's program against the row's tests in the sandbox.

The program is the last fenced code block of the completion (```python ... ``` preferred, else any
fence), or the whole completion when it has no fence. The row's tests (field ``tests`` by default)
come in one of three shapes:

- a string of Python (asserts, a ``check(...)`` call): run once after the program in the same file;
  the test passes when the process exits 0;
- a list of strings: each run separately after the program (one test case each);
- a list of ``{"input": ..., "output": ...}``: the program runs with ``input`` on stdin and passes when
  its stdout equals ``output`` (trailing whitespace of each line and trailing blank lines ignored).

Reward: 1.0 when every case passes, else 0.0; with ``partial: true`` the fraction of cases passed.
A program that loops, forks, allocates without bound, writes outside its directory or reads the
host's environment gets nothing it wants: see :mod:`alignlab.rollout.sandbox`.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.rollout.sandbox import SandboxLimits, run_python, self_check

__all__ = ["extract_program", "make_code_reward", "run_tests"]

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The last ```python block (also ```py / ```python3), else the last fenced block, else the text."""
    blocks = _FENCE.findall(completion)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else completion


def _same_output(got: str, want: str) -> bool:
    def norm(s: str) -> list[str]:
        lines = [line.rstrip() for line in s.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return norm(got) == norm(want)


# Assertion tests pass when a line the program cannot know is written after them: the driver reads a fresh nonce
# and the tests from stdin (then points stdin at an empty pipe; the sandbox has unlinked the file), so neither is in
# any file the program can read; it compiles the tests and binds exec, os.write and the trace setters to locals
# before the program runs, so a program replacing builtins.exec or os.write, or leaving a trace function to jump
# over the tests, changes nothing the driver calls. The program and the tests run in a `__main__` module of their own
# (no harness name in reach; the program's `from __future__` imports stay first in its source; doctest, unittest,
# pickle and inspect find what they look for there), and the nonce goes to a copy of the stdout the driver started
# with. The whole stdout is read back (up to file_size_mb), so a program's own prints cannot push the nonce out of
# sight. Exiting early with status 0 (sys.exit(0), os._exit(0)), which passed every test when success was the exit
# status alone, fails. What an in-process harness cannot stop: a program reading its own interpreter's frames
# (sys._getframe, gc) finds the nonce, and an assert trusts the values the program returns (an object whose == is
# always true passes `assert f(x) == y`); give stdin/stdout cases where a policy may learn such tricks.
_DRIVER = """def _alignlab_driver(program):
    import linecache, os, sys, types
    nonce = sys.stdin.readline().strip()
    tests = compile(sys.stdin.read(), "tests.py", "exec")
    run, write, settrace, setprofile = exec, os.write, sys.settrace, sys.setprofile
    empty, end = os.pipe()
    os.close(end)
    os.dup2(empty, 0)
    verdict = os.dup(1)
    main = types.ModuleType("__main__")
    main.__file__ = os.path.abspath("solution.py")
    sys.modules["__main__"] = main
    linecache.cache[main.__file__] = (len(program), None, program.splitlines(True), main.__file__)
    run(compile(program, main.__file__, "exec"), main.__dict__)
    settrace(None)
    setprofile(None)
    run(tests, main.__dict__)
    sys.stdout.flush()
    write(verdict, ("\\n" + nonce + "\\n").encode())
_alignlab_driver(%r)
"""


def _asserts_pass(program: str, tests: str, limits: SandboxLimits) -> bool:
    import uuid

    nonce = uuid.uuid4().hex
    whole = replace(limits, max_output_bytes=max(limits.max_output_bytes, limits.file_size_mb * 2**20))
    res = run_python(_DRIVER % (program,), stdin=nonce + "\n" + tests, limits=whole)
    return res.passed and res.stdout.rstrip().endswith(nonce)


def _io_pass(program: str, case: dict, limits: SandboxLimits) -> bool:
    want = str(case["output"])
    # read back all the output a right answer could have (the default cap is 64 KiB)
    limits = replace(limits, max_output_bytes=max(limits.max_output_bytes, 2 * len(want.encode()) + 4096))
    res = run_python(program, stdin=str(case["input"]), limits=limits)
    return res.passed and not res.output_truncated and _same_output(res.stdout, want)


def _check_test_source(tests: str, where: str) -> None:
    """A blank string, or a JSON list kept as text (as APPS and TACO store theirs), asserts nothing: every program
    would pass it."""
    import json

    if not tests.strip():
        raise AlignlabError(f"reward code: {where}tests is empty; every program would pass it")
    try:
        decoded = json.loads(tests)
    except ValueError:
        return
    if isinstance(decoded, (list, dict)):
        raise AlignlabError(f"reward code: {where}tests is JSON text ({type(decoded).__name__}), not Python; give "
                            "the decoded list of {'input': ..., 'output': ...} cases or of assert strings")


def run_tests(program: str, tests: Any, limits: SandboxLimits, *, where: str = "") -> tuple[int, int]:
    """(cases passed, cases) for one program; ``tests`` in one of the module's three shapes."""
    if isinstance(tests, str):
        _check_test_source(tests, where)
        return int(_asserts_pass(program, tests, limits)), 1
    if not isinstance(tests, (list, tuple)) or not tests:
        raise AlignlabError(f"reward code: {where}tests must be a string or a non-empty list, got {type(tests).__name__}")
    passed = 0
    for i, case in enumerate(tests):
        if isinstance(case, str):
            _check_test_source(case, f"{where}test case {i}: ")
            passed += _asserts_pass(program, case, limits)
        elif isinstance(case, dict) and "input" in case and "output" in case:
            passed += _io_pass(program, case, limits)
        else:
            raise AlignlabError(
                f"reward code: {where}test case {i} must be a string or {{'input': ..., 'output': ...}}"
            )
    return passed, len(tests)


def make_code_reward(
    tests_field: str = "tests",
    partial: bool = False,
    timeout_s: float = 5.0,
    cpu_s: int = 5,
    memory_mb: int = 1024,
    workers: int = 1,
):
    """RewardFn running each completion's program against its row's ``tests_field`` in the sandbox.

    ``workers`` > 1 runs that many completions at once (each in its own process)."""
    limits = SandboxLimits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb)
    if workers < 1:
        raise AlignlabError(f"reward code: workers must be >= 1 (got {workers})")
    self_check()

    def one(i: int, completion: str, tests: Any) -> float:
        if tests is None:
            raise AlignlabError(f"reward code: row {i} has no '{tests_field}'")
        passed, total = run_tests(extract_program(completion), tests, limits, where=f"row {i}: ")
        return passed / total if partial else float(passed == total)

    def code(prompts: Any, completions: list[str], **fields: Any) -> list[float]:
        rows = fields.get(tests_field)
        if rows is None:
            raise AlignlabError(f"reward code: the rows have no '{tests_field}' field with tests")
        jobs = list(zip(range(len(completions)), completions, rows))
        if workers == 1:
            return [one(*job) for job in jobs]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: one(*job), jobs))

    return code
