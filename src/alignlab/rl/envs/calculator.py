"""The `calculator` environment: arithmetic word problems (GSM8K rows work as they are) with a
calculator tool, rewarded for a correct final answer.

The tool evaluates an arithmetic expression with :func:`safe_eval`: the expression is parsed with
``ast`` and only numbers, + - * / // % **, unary +/-, parentheses and a few functions (abs, round,
min, max, sqrt) are interpreted; everything else (names, attributes, subscripts, strings,
comprehensions, lambdas) is rejected, and sizes are bounded so no expression can take long or eat
memory. Nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from typing import Any

from alignlab.rl.envs.base import ToolEnvironment, register_env

__all__ = ["CalculatorEnv", "format_number", "gsm8k_transcript", "safe_eval"]

MAX_EXPRESSION_CHARS = 300
MAX_NODES = 200
MAX_INT_DIGITS = 1000
"""No integer (input, intermediate or result) may have more decimal digits than this."""
MAX_EXPONENT = 1000

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt}


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value != 0 and math.log10(abs(value)) > MAX_INT_DIGITS:
        raise ValueError(f"number too large (more than {MAX_INT_DIGITS} digits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result is not finite")
    return value


def _power(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise ValueError(f"exponent too large (|exponent| > {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and base not in (0, 1, -1):
        if exp * math.log10(abs(base)) > MAX_INT_DIGITS:  # check BEFORE computing a huge integer
            raise ValueError(f"number too large (more than {MAX_INT_DIGITS} digits)")
    try:
        result = base ** exp
    except OverflowError as e:
        raise ValueError("result too large") from e
    except ZeroDivisionError as e:  # 0 ** -1: an answer for the model, not an exception out of the rollout
        raise ValueError("division by zero (zero to a negative power)") from e
    if isinstance(result, complex):
        raise ValueError("complex result (fractional power of a negative number)")
    return result


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise ValueError(f"only numbers are allowed, not {type(node.value).__name__}")
        return _check_size(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except OverflowError as e:  # e.g. a huge integer divided into a float
            raise ValueError("result too large") from e
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ValueError("'^' is not a power here; write ** for powers")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords or not node.args:
            raise ValueError(f"{node.func.id}() takes positional numbers only")
        args = [_eval(a) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and (not isinstance(args[1], int) or abs(args[1]) > 15):
            raise ValueError("round(x, n) needs an integer n with |n| <= 15")
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{node.func.id}(): {e}") from e
    raise ValueError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression; ValueError (with a reason a model can read) otherwise."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a valid expression: {e.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ValueError(f"expression has more than {MAX_NODES} parts")
    return _eval(tree.body)


def format_number(value: int | float) -> str:
    """An integer-valued float prints without '.0'; other floats with up to 10 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:.10g}"


@register_env("calculator")
class CalculatorEnv(ToolEnvironment):
    """Word problems with a calculator tool; ``math`` reward on the final answer by default."""

    name = "calculator"
    system_prompt = (
        "Solve the problem step by step. You have a calculator. To use it, write\n"
        '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * (3 + 4)"}}</tool_call>\n'
        "and stop; the result comes back in the next message. Allowed: numbers, + - * / // % ** "
        "and parentheses. When you know the answer, write it as \\boxed{answer} without a tool call."
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.tools = {"calculator": self._calculate}

    @staticmethod
    def _calculate(arguments: dict[str, Any]) -> str:
        expression = arguments.get("expression")
        if not isinstance(expression, str):
            raise ValueError('calculator needs {"expression": "<arithmetic>"}')
        return format_number(safe_eval(expression))


_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")


def gsm8k_transcript(question: str, solution: str, max_turns: int = 4, *,
                     tool: bool = True) -> list[dict[str, str]] | None:
    """A GSM8K reference solution replayed as a calculator episode (an SFT warm-up for `env=calculator`).

    GSM8K writes each calculation as ``48/2 = <<48/2=24>>24``. Each annotation becomes the end of an assistant
    turn (the text so far, then a calculator tool call of its expression), the calculator's reply becomes a
    ``tool`` message, and the last turn is the rest of the solution with ``\\boxed{final answer}``: the exact
    messages :class:`CalculatorEnv` exchanges (its system prompt, the question as the user message). None when
    an annotation is not an expression the calculator evaluates to the annotated value, or when the episode
    would need more than ``max_turns`` turns. ``tool=False`` writes the same solution as one assistant turn that
    does the arithmetic in its text (annotations dropped, ``48/2 = 24``), under the same system prompt: a warm-up
    with both kinds teaches the format and leaves to RL when calling the tool pays."""
    body, sep, final = solution.rpartition("####")
    if not sep or not final.strip():
        return None
    messages = [{"role": "system", "content": CalculatorEnv.system_prompt}, {"role": "user", "content": question}]
    pos = 0
    for m in _ANNOTATION.finditer(body):
        expression, stated = m.group(1).strip(), m.group(2).strip()
        try:
            value = safe_eval(expression)
            if not math.isclose(value, float(stated.replace(",", "")), rel_tol=1e-6, abs_tol=1e-9):
                return None
        except ValueError:
            return None
        call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
        text = body[pos:m.start()].rstrip()
        messages += [{"role": "assistant", "content": f"{text}\n<tool_call>{call}</tool_call>".lstrip()},
                     {"role": "tool", "content": format_number(value)}]
        pos = m.end()
    messages.append({"role": "assistant", "content": f"{body[pos:].strip()}\n\\boxed{{{final.strip()}}}".lstrip()})
    if sum(m["role"] == "assistant" for m in messages) > max_turns:
        return None
    if not tool:  # kept or left out by the same rules, so the plain share is drawn from the same solutions
        plain = f"{_ANNOTATION.sub('', body).strip()}\n\\boxed{{{final.strip()}}}".lstrip()
        return messages[:2] + [{"role": "assistant", "content": plain}]
    return messages
