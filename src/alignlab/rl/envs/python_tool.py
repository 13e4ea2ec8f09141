"""The `python` environment: problems solved with a Python interpreter as a tool (the code sandbox of
:mod:`alignlab.rollout.sandbox`), rewarded for a correct final answer (``math`` by default).

The tool runs ``{"code": "..."}`` in a fresh sandboxed process (no state carries over between calls)
and answers with its stdout, its stderr when it failed, or that it timed out.
"""

from __future__ import annotations

import signal
from typing import Any

from alignlab.rl.envs.base import ToolEnvironment, register_env
from alignlab.rollout.sandbox import SandboxLimits, run_python, self_check

__all__ = ["PythonToolEnv"]


@register_env("python")
class PythonToolEnv(ToolEnvironment):
    """Problems with a sandboxed Python tool; ``math`` reward on the final answer by default."""

    name = "python"
    system_prompt = (
        "Solve the problem. You can run Python: write\n"
        '<tool_call>{"name": "python", "arguments": {"code": "print(12 * 7)"}}</tool_call>\n'
        "and stop; what the program prints comes back in the next message (each run starts fresh). "
        "When you know the answer, write it as \\boxed{answer} without a tool call."
    )

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512, **options: Any):
        super().__init__(**options)
        self_check()
        self.limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb)
        self.tools = {"python": self._run_code}

    def _run_code(self, arguments: dict[str, Any]) -> str:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ValueError('python needs {"code": "<program>"}')
        res = run_python(code, limits=self.limits)
        # a failed run is a tool error (ValueError: the environment counts it in `tool_errors`, as the calculator's)
        if res.timed_out:
            raise ValueError(f"timed out after {self.limits.timeout_s:g} s\n{res.stdout}")
        if "sandbox: killed: " in res.stderr:  # the sandbox killed it for its disk use, not for time
            raise ValueError(f"killed: {res.stderr.rsplit('sandbox: killed: ', 1)[1].strip()}\n{res.stdout}")
        # Its CPU seconds ran out (SIGXCPU at the soft limit, SIGKILL at the hard one; the wall-clock kill sets
        # timed_out instead). The CPU limit equals the timeout, so a busy loop meets either first: both are a time-out.
        if res.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise ValueError(f"timed out after {self.limits.cpu_s} s of CPU\n{res.stdout}")
        if res.returncode != 0:
            raise ValueError(f"exit status {res.returncode}:\n{res.stdout}{res.stderr}")
        return res.stdout if res.stdout.strip() else "(no output; use print)"
