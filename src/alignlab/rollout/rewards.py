"""Reward functions for rollouts, best-of-N and online RL: one interface, a registry by name.

    RewardFn(prompts, completions, **row_fields) -> list[float]

`prompts[i]` is what was sent to the model (a string or a list of chat messages), `completions[i]` the
generated text (a string), and every extra dataset column arrives as a keyword holding one value per
completion (TRL's convention), e.g. `answer=[...]` for GSM8K. Functions accept **kwargs they do not use.

Built in: `sentiment` (VADER compound score in [-1, 1]), `gsm8k` (numeric answer match, 1.0 or 0.0),
`format` (regex check, 1.0 or 0.0), `reward_model` (a scalar-head checkpoint as scorer), `math`
(final-answer equivalence with math-verify, 1.0 or 0.0), `code` (the program run against the row's
tests in a sandbox), `judge` (an eval judge, pointwise or pairwise against a reference, cached). Any
other callable is named as "module.path:function" (or "path/to/file.py:function").

A list of rewards is their weighted sum: `get_reward(["math", "format"], weights=[1.0, 0.2],
format={"pattern": ...})`, options per reward by name (see :class:`WeightedReward`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from alignlab.errors import AlignlabError
from alignlab.rollout.verify_math import _braced, numbers_equal


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[str], **row_fields: Any) -> list[float]: ...


_REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str):
    """Register a factory `make(**options) -> RewardFn` under `name` (options come from config)."""

    def deco(factory: Callable[..., RewardFn]):
        _REGISTRY[name] = factory
        return factory

    return deco


def reward_names() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(spec: str | Callable | Sequence[str | Callable], weights: Sequence[float] | None = None,
               **options: Any) -> RewardFn:
    """A reward function from a registry name, "module.path:function", "file.py:function", or a callable.
    `options` go to the registered factory (e.g. pattern= for "format", path= for "reward_model").

    A list or tuple of specs gives a :class:`WeightedReward`: `weights` (default all 1.0) one per
    reward, and `options` keyed by reward name, each a dict for that reward's factory."""
    if isinstance(spec, (list, tuple)):
        return _weighted(list(spec), weights, options)
    if weights is not None:
        raise AlignlabError(f"reward: weights are for a list of rewards; {spec!r} is one reward")
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise AlignlabError(f"reward: expected a name or 'module.path:function', got {spec!r}")
    if spec in _REGISTRY:
        factory = _REGISTRY[spec]
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()) and (unknown := sorted(set(options) - set(params))):
            raise AlignlabError(f"reward {spec}: unknown option {unknown[0]!r} (its options: "
                                f"{', '.join(params) or 'none'})")
        return factory(**options)
    if ":" in spec:
        fn = import_callable(spec)
        return fn if not options else _bind(fn, options)
    raise AlignlabError(
        f"reward: unknown reward {spec!r}; built in: {', '.join(reward_names())}, "
        "or name a Python function as 'module.path:function'"
    )


def _weighted(specs: list, weights: Sequence[float] | None, options: dict) -> WeightedReward:
    if not specs:
        raise AlignlabError("reward: an empty list of rewards")
    names = [s if isinstance(s, str) else getattr(s, "__name__", f"reward{i}") for i, s in enumerate(specs)]
    if len(set(names)) != len(names):
        raise AlignlabError(f"reward: {names} names a reward twice; give it one weight instead")
    weights = [1.0] * len(specs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(specs):
        raise AlignlabError(f"reward_weights: {len(weights)} weights for {len(specs)} rewards {names}")
    unknown = set(options) - set(names)
    if unknown:
        raise AlignlabError(f"reward options {sorted(unknown)} do not name one of the rewards {names}")
    for name, opts in options.items():
        if not isinstance(opts, dict):
            raise AlignlabError(f"reward options for {name!r}: expected a mapping, got {type(opts).__name__}")
    fns = [get_reward(s, **options.get(n, {})) for s, n in zip(specs, names)]
    return WeightedReward(tuple(names), tuple(fns), tuple(weights))


class WeightedReward:
    """The weighted sum of several rewards (e.g. `math` + 0.2 * `format`). After each call,
    `last_components` maps each reward's name to its unweighted scores, for logging."""

    __name__ = "weighted"

    def __init__(self, names: tuple[str, ...], fns: tuple[RewardFn, ...], weights: tuple[float, ...]):
        self.names, self.fns, self.weights = names, fns, weights
        self.last_components: dict[str, list[float]] = {}

    def __call__(self, prompts, completions, **fields) -> list[float]:
        total = [0.0] * len(completions)
        self.last_components = {}
        for name, fn, w in zip(self.names, self.fns, self.weights):
            values = score(fn, prompts, completions, **fields)
            self.last_components[name] = values
            total = [t + w * v for t, v in zip(total, values)]
        return total


def _bind(fn: Callable, options: dict) -> RewardFn:
    def bound(prompts, completions, **fields):
        return _call(fn, prompts, completions, {**options, **fields})

    return bound


def import_callable(spec: str) -> Callable:
    """Import "module.path:function" or "path/to/file.py:function"; AlignlabError saying what failed."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise AlignlabError(f"reward: {spec!r} is not of the form 'module.path:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AlignlabError(f"reward: file {module_name} (from {spec!r}) does not exist")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except AlignlabError:
        raise
    except Exception as e:  # ImportError, SyntaxError, or whatever the module raises at import
        raise AlignlabError(f"reward: cannot import module {module_name!r} for {spec!r}: "
                            f"{type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise AlignlabError(f"reward: module {module_name!r} has no attribute {attr!r} (from {spec!r})")
    if not callable(fn):
        raise AlignlabError(f"reward: {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _call(fn: RewardFn, prompts: list, completions: list[str], fields: dict[str, Any]) -> Any:
    """TRL's call, with keywords (its `reward_len(completions, **kwargs)`), or by position for other parameter names."""
    try:
        named = "completions" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins, C callables)
        named = False
    return fn(prompts=prompts, completions=completions, **fields) if named else fn(prompts, completions, **fields)


def score(fn: RewardFn, prompts: Sequence[Any], completions: Sequence[str], **row_fields: Any) -> list[float]:
    """Call a reward and check its answer: one finite float per completion, else AlignlabError."""
    out = _call(fn, list(prompts), list(completions), row_fields)
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError) as e:
        raise AlignlabError(f"reward {name}: must return a list of numbers, got {str(out)[:80]!r}") from e
    if len(values) != len(completions):
        raise AlignlabError(f"reward {name}: returned {len(values)} values for {len(completions)} completions")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise AlignlabError(f"reward {name}: non-finite value {values[bad[0]]} for completion {bad[0]}")
    return values


# ---------------------------------------------------------------- sentiment


@register_reward("sentiment")
def sentiment_reward() -> RewardFn:
    """VADER compound score of each completion (Hutto & Gilbert 2014), in [-1, 1]; positive is good."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompts, completions, **_):
        return [analyzer.polarity_scores(c)["compound"] for c in completions]

    return sentiment


# ---------------------------------------------------------------- GSM8K numeric answer

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def extract_number(text: str) -> float | None:
    """The final numeric answer in `text`: the last \\boxed{...} (nested braces too), else the number opening the
    line after the last '####', else the last number anywhere. Commas, '$' and a trailing '.' are ignored;
    fractions a/b and \\frac{a}{b} are divided."""

    last = text.rfind("\\boxed{")
    if last >= 0:
        inner = _braced(text, text.index("{", last))
        if inner is not None:
            return _to_number(inner)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        value = _to_number(tail[0]) if tail else None  # its own line: a later check line's "48/2" is no answer
        if value is not None:
            return value
    numbers = re.findall(_NUMBER, text)
    return _parse(numbers[-1]) if numbers else None


def _to_number(text: str) -> float | None:
    text = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)
    found = re.search(_NUMBER, text)
    value = _parse(found.group(0)) if found else None
    frac = found and re.match(r"\s*/\s*(\d+(?:\.\d+)?)", text[found.end():])  # the first number over another
    return value / float(frac.group(1)) if value is not None and frac and float(frac.group(1)) else value


def _parse(token: str) -> float | None:
    try:
        return float(token.replace(",", "").replace("$", ""))
    except ValueError:
        return None


def numbers_match(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and numbers_equal(a, b)


@register_reward("gsm8k")
def gsm8k_reward(answer_field: str = "answer") -> RewardFn:
    """1.0 when the completion's final number equals the row's reference answer numerically, else 0.0.
    The reference may be a full GSM8K solution ('... #### 72') or the bare number."""

    def gsm8k(prompts, completions, **fields):
        refs = fields.get(answer_field)
        if refs is None:
            raise AlignlabError(f"reward gsm8k: the rows have no '{answer_field}' field with reference answers")
        return [1.0 if numbers_match(extract_number(c), extract_number(str(r)) if r is not None else None)
                else 0.0 for c, r in zip(completions, refs)]

    return gsm8k


# ---------------------------------------------------------------- format check

DEFAULT_FORMAT = r"####\s*-?[\d,]*\.?\d+\s*$"


@register_reward("format")
def format_reward(pattern: str = DEFAULT_FORMAT, full_match: bool = False) -> RewardFn:
    """1.0 when the completion matches `pattern` (re.search, or re.fullmatch with full_match), else 0.0.
    The default asks for a GSM8K-style final line '#### <number>'."""
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise AlignlabError(f"reward format: bad regular expression {pattern!r}: {e}") from e
    test = rx.fullmatch if full_match else rx.search

    def format_check(prompts, completions, **_):
        return [1.0 if test(c) else 0.0 for c in completions]

    return format_check


# ---------------------------------------------------------------- reward model


@register_reward("reward_model")
def reward_model_reward(path: str | None = None, model: Any = None, tokenizer: Any = None,
                        batch_size: int = 16, max_length: int | None = None, device: str = "cpu") -> RewardFn:
    """Scores from a trained reward model: the scalar at the last token of prompt + completion, tokenised as
    `alignlab rm` trains. Give `path` (a checkpoint `alignlab rm` wrote, loaded on `device`) or an already loaded
    `model` and `tokenizer`; `max_length` cuts a longer sequence's prompt as training does (default: the model's
    context); `batch_size` sequences a forward."""
    if max_length is not None and max_length < 2:
        raise AlignlabError(f"reward reward_model: max_length must be >= 2, got {max_length}")
    if model is None:
        if path is None:
            raise AlignlabError("reward reward_model: give path: <reward model checkpoint>")
        model, tokenizer = _load_scorer(path, device)
    if tokenizer is None:
        raise AlignlabError("reward reward_model: a loaded model needs its tokenizer too")
    return _RewardModelScorer(model, tokenizer, batch_size, max_length)


def _load_scorer(path: str, device: str = "cpu"):
    from alignlab.models.heads import load_scorer
    from alignlab.models.load import load_tokenizer

    return load_scorer(path, device=device, trained_head=True).eval(), load_tokenizer(path)


class _RewardModelScorer:
    """Adapter: reward model -> RewardFn. Each (prompt, completion) becomes the sequence `alignlab rm` trained on
    (data/ranked.py `tokenize_example`: the chat template for message prompts, plain text + EOS for a text prompt),
    scored at its last token as in training (train/reward.py `sequence_scores`); a scorer that saw `<|im_end|>` last
    in training is not asked about the template's trailing newline. Consecutive completions of one prompt (a GRPO
    group) are one example: under span attention their prompt runs once (RewardCollator's prefix-shared row)."""

    __name__ = "reward_model"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, max_length: int | None = None):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        # a longer sequence has its prompt cut as training would; by default the model's context is the only cut
        self.max_length = max_length or getattr(getattr(model, "config", None), "max_position_embeddings",
                                                None) or 2**31

    def __call__(self, prompts, completions, **_):
        import torch

        from alignlab.data.formats import assistant, user
        from alignlab.data.ranked import RankedRow, RewardCollator, tokenize_example
        from alignlab.models.attention import uses_spans
        from alignlab.train.batches import to_device
        from alignlab.train.reward import sequence_scores

        groups: list[tuple[Any, list[str]]] = []
        for p, c in zip(prompts, completions):
            if groups and groups[-1][0] == p:
                groups[-1][1].append(c)
            else:
                groups.append((p, [c]))
        examples = [tokenize_example(RankedRow([user(p)] if isinstance(p, str) else list(p),
                                               [[assistant(c)] for c in cs], chat=not isinstance(p, str)),
                                     self.tok, self.max_length, None) for p, cs in groups]
        # widths rounded to 16 as `alignlab rm` rounds them (RewardConfig.pad_to_multiple_of): fewer oneDNN kernels
        collate = RewardCollator(self.tok.pad_token_id, spans=uses_spans(self.model), pad_to_multiple_of=16)
        batches: list[list] = [[]]
        for ex in examples:  # at most batch_size sequences a forward (a larger group alone)
            if batches[-1] and sum(len(e.sequences) for e in batches[-1]) + len(ex.sequences) > self.batch_size:
                batches.append([])
            batches[-1].append(ex)
        out: list[float] = []
        with torch.inference_mode():
            for batch in batches:
                out += sequence_scores(self.model, to_device(collate(batch), self.model.device)).tolist()
        return out


# ---------------------------------------------------------------- verifiable rewards (modules of their own)


@register_reward("math")
def math_reward(answer_field: str = "answer") -> RewardFn:
    """1.0 when the completion's final answer (\\boxed{}, ####, "answer is", last number) is
    mathematically equal to the row's reference (math-verify), else 0.0; see rollout.verify_math."""
    from alignlab.rollout.verify_math import make_math_reward

    return make_math_reward(answer_field)


@register_reward("code")
def code_reward(tests_field: str = "tests", partial: bool = False, timeout_s: float = 5.0, cpu_s: int = 5,
                memory_mb: int = 1024, workers: int = 1) -> RewardFn:
    """The completion's program run against the row's tests in the sandbox; see rollout.code_reward."""
    from alignlab.rollout.code_reward import make_code_reward

    return make_code_reward(tests_field, partial, timeout_s, cpu_s, memory_mb, workers)


@register_reward("judge")
def judge_reward(judge: Any = None, mode: str = "pointwise", reference_field: str = "reference",
                 cache_size: int = 100_000, failed_value: float = 0.0) -> RewardFn:
    """An eval judge as reward, pointwise or pairwise against a reference, cached; see rollout.judge_reward."""
    from alignlab.rollout.judge_reward import make_judge_reward

    return make_judge_reward(judge, mode, reference_field, cache_size, failed_value)


# ---------------------------------------------------------------- exact answer (builtin:reverse, builtin:add)


def exact_match_reward(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any] = (),
                       **_: Any) -> list[float]:
    """1.0 when the completion (whitespace stripped) equals the row's `answer` exactly, else 0.0.

    Named in configs as `reward: exact_match` (or `alignlab.rollout.rewards:exact_match_reward`)."""
    if len(answer) != len(completions):
        raise AlignlabError("reward exact_match: the rows carry no 'answer' field (one per completion)")
    return [1.0 if a is not None and c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


@register_reward("exact_match")
def _exact_match() -> RewardFn:
    return exact_match_reward
