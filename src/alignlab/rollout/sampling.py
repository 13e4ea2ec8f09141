"""Best-of-N and rejection sampling: N samples per prompt, scored by any reward, turned into a dataset.

- preference mode: the best and the worst sample of each prompt become chosen / rejected (as in
  RAFT-style / "best-vs-worst" self-rewarding pipelines, e.g. Xiong et al. 2023, Yuan et al. 2024);
  prompts whose samples all score the same are skipped (a tie carries no preference).
- sft mode (rejection sampling, Touvron et al. 2023 §3.2.2): the top `keep` samples of each prompt,
  optionally only those scoring at least `min_reward`.

Records are written in TRL's formats so `alignlab dpo` / `alignlab sft` read them as they are:
chat prompts give the conversational format (prompt as messages, chosen/rejected as one assistant
message; sft: `messages`), plain-text prompts the standard one (strings; sft: prompt/completion).
Each record also carries its scores (`score_chosen`, `score_rejected` / `reward`), which loaders ignore.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from alignlab.data.convert import write_records as write_jsonl  # noqa: F401 (the one atomic JSONL writer)
from alignlab.errors import AlignlabError
from alignlab.rollout.generate import GenerationResult, Sample, SamplingConfig, generate
from alignlab.rollout.rewards import RewardFn, score

MODES = ("preference", "sft")


@dataclass
class ScoredGroup:
    """The n samples of one prompt with their rewards."""

    prompt: Any
    """The prompt as given: a PromptRow, a list of messages or a string."""
    samples: list[Sample]
    rewards: list[float]


@dataclass
class BestOfN:
    groups: list[ScoredGroup]
    generation: GenerationResult
    dropped: dict[str, int] = field(default_factory=dict)
    """Why samples or prompts were left out of the written dataset (filled by the record builders)."""


def prompt_messages(prompt: Any) -> tuple[list[dict], bool]:
    """(messages, chat) for a PromptRow, a list of messages, or a plain string (chat=False)."""
    if hasattr(prompt, "prompt") and hasattr(prompt, "chat"):
        return list(prompt.prompt), bool(prompt.chat)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], False
    return list(prompt), True


def row_fields(prompts: list[Any], n: int) -> dict[str, list]:
    """Per-completion keyword fields for rewards, prompt i's repeated n times: every column of its record but
    the prompt and completion (TRL's convention; None where a record lacks one), and `answer` the row's reference
    answer where it has one."""
    per_row = []
    for p in prompts:
        fields = dict(getattr(p, "fields", None) or {})
        if getattr(p, "answer", None) is not None:
            fields["answer"] = p.answer
        per_row.append(fields)
    keys = sorted({k for f in per_row for k in f})
    return {k: [f.get(k) for f in per_row for _ in range(n)] for k in keys}


def reward_input(prompt: Any) -> Any:
    """What a reward function sees as the prompt: messages for chat prompts, text for plain ones."""
    msgs, chat = prompt_messages(prompt)
    return msgs if chat else "".join(m["content"] for m in msgs)


def sample_and_score(model: Any, tokenizer: Any, prompts: list[Any], reward: RewardFn, n: int,
                     cfg: SamplingConfig | None = None, fields: dict[str, list] | None = None) -> BestOfN:
    """Generate n samples per prompt and score every one with `reward`."""
    if n < 2:
        raise AlignlabError(f"best-of-n: n must be >= 2 to choose between samples, got {n}")
    gen = generate(model, tokenizer, prompts, cfg, n=n)
    fields = row_fields(prompts, n) if fields is None else fields
    inputs = [reward_input(p) for p in prompts for _ in range(n)]
    rewards = score(reward, inputs, [s.text for s in gen.samples], **fields)
    groups = [ScoredGroup(p, gen.samples[i * n:(i + 1) * n], rewards[i * n:(i + 1) * n])
              for i, p in enumerate(prompts)]
    return BestOfN(groups, gen)


def _usable(g: ScoredGroup, drop_truncated: bool, dropped: Counter) -> list[tuple[float, int, Sample]]:
    """(reward, index, sample) of a group's samples that may become records: non-empty (loaders refuse an empty
    completion), and with `drop_truncated` not cut at max_new_tokens (sft and dpo train an end-of-sequence token
    after every completion: a cut one teaches stopping mid-sentence)."""
    out = []
    for i, (r, s) in enumerate(zip(g.rewards, g.samples)):
        if not s.text.strip():
            dropped["empty_completion"] += 1
        elif drop_truncated and s.finish_reason == "length":
            dropped["cut_at_max_new_tokens"] += 1
        else:
            out.append((r, i, s))
    return out


def preference_records(result: BestOfN, min_margin: float = 0.0, drop_truncated: bool = False) -> list[dict]:
    """Best vs worst sample of each prompt, from `_usable`'s samples; a prompt is skipped when fewer than two
    distinct texts remain or the reward gap is <= min_margin (>= 0: a negative one would turn ties into pairs)."""
    if not min_margin >= 0:
        raise AlignlabError(f"best-of-n: --min-margin must be >= 0, got {min_margin}")
    out, dropped = [], Counter()
    for g in result.groups:
        scored = [(r, s.text) for r, _, s in _usable(g, drop_truncated, dropped)]
        if len({t for _, t in scored}) < 2:
            dropped["fewer_than_two_distinct"] += 1
            continue
        # max/min keep the first of equal rewards: generation order, so the choice is deterministic.
        best = max(scored, key=lambda x: x[0])
        worst = min((x for x in scored if x[1] != best[1]), key=lambda x: x[0])
        if best[0] - worst[0] <= min_margin:
            dropped["tie" if best[0] == worst[0] else "below_min_margin"] += 1
            continue
        msgs, chat = prompt_messages(g.prompt)
        if chat:
            rec = {"prompt": msgs, "chosen": [{"role": "assistant", "content": best[1]}],
                   "rejected": [{"role": "assistant", "content": worst[1]}]}
        else:
            rec = {"prompt": "".join(m["content"] for m in msgs), "chosen": best[1], "rejected": worst[1]}
        rec.update(score_chosen=best[0], score_rejected=worst[0])
        out.append(rec)
    result.dropped.update({k: v for k, v in dropped.items() if v})
    return out


def sft_records(result: BestOfN, keep: int = 1, min_reward: float | None = None,
                drop_truncated: bool = False) -> list[dict]:
    """Rejection sampling: the `keep` highest-scoring distinct texts among each prompt's `_usable` samples (at
    least `min_reward` when given), one record each."""
    if keep < 1:
        raise AlignlabError(f"best-of-n: keep must be >= 1, got {keep}")
    out, dropped = [], Counter()
    for g in result.groups:
        ranked = sorted(_usable(g, drop_truncated, dropped), key=lambda x: (-x[0], x[1]))
        kept, texts = 0, set()
        for r, _, s in ranked:
            if kept == keep:
                break
            if s.text in texts:  # a second copy of a kept text is no second example
                dropped["duplicate"] += 1
                continue
            if min_reward is not None and r < min_reward:
                dropped["below_min_reward"] += 1
                continue
            msgs, chat = prompt_messages(g.prompt)
            if chat:
                rec = {"messages": msgs + [{"role": "assistant", "content": s.text}]}
            else:
                rec = {"prompt": "".join(m["content"] for m in msgs), "completion": s.text}
            rec["reward"] = r
            out.append(rec)
            kept, texts = kept + 1, texts | {s.text}
    result.dropped.update({k: v for k, v in dropped.items() if v})
    return out


def build_records(result: BestOfN, mode: str, keep: int = 1, min_margin: float = 0.0,
                  min_reward: float | None = None, drop_truncated: bool = False) -> list[dict]:
    if mode == "preference":
        return preference_records(result, min_margin, drop_truncated)
    if mode == "sft":
        return sft_records(result, keep, min_reward, drop_truncated)
    raise AlignlabError(f"best-of-n: mode must be one of {', '.join(MODES)}, got {mode!r}")
