"""`alignlab passk`: pass@k and maj@k of a model on a JSONL file of problems, scored by a reward.

    alignlab passk model=smollm2-135m-instruct data=../shared/data/gsm8k/test.jsonl limit=200 n=8 k=[1,8]

Each line of ``data`` is a JSON object; ``prompt_field`` is the question (sent as a user message
when ``chat``), and the ``fields`` columns go to the reward (``answer`` for ``math``/``gsm8k``,
``tests`` for ``code``). Prints one JSON object and writes it to ``output`` when set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.cli import config_command
from alignlab.errors import AlignlabError


@dataclass
class PassKConfig:
    """`alignlab passk`: sample n answers per problem, score them, report pass@k / maj@k."""

    model: str = "tiny-random"
    """Model to evaluate: alias (tiny-random, smollm2-135m-instruct), checkpoint dir or hub id."""
    data: str = ""
    """JSONL file of problems."""
    prompt_field: str = "question"
    """Column holding the problem text."""
    fields: list[str] = field(default_factory=lambda: ["answer"])
    """Columns passed to the reward by name (answer for math/gsm8k, tests for code)."""
    reward: str = "math"
    """Reward deciding correctness: math, gsm8k, code, or any registered / module.path:function reward."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the reward's factory (e.g. timeout_s for code)."""
    threshold: float = 1.0
    """A sample counts as correct when its reward is >= threshold."""
    n: int = 8
    """Samples per problem."""
    k: list[int] = field(default_factory=lambda: [1, 8])
    """The k values to report (each <= n)."""
    majority: bool = True
    """Also report maj@k, voting over final answers extracted as the math reward extracts them."""
    chat: bool = True
    """Send the problem as a chat user message (the model's chat template); false sends the raw text."""
    system_prompt: str = ""
    """A system message before the problem (chat only; empty for none)."""
    offset: int = 0
    """Problems skipped at the start of the file."""
    limit: int = 200
    """Problems evaluated (after offset)."""
    max_new_tokens: int = 256
    """Most tokens per answer."""
    temperature: float = 1.0
    """Sampling temperature (pass@k needs sampling, not greedy decoding)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off)."""
    seed: int = 0
    """Sampling seed."""
    batch_size: int = 64
    """Sequences decoded together."""
    device: str = "auto"
    """cpu, cuda or auto."""
    output: str = ""
    """Write the result JSON here too (empty: print only)."""


def load_problems(cfg: PassKConfig) -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, reward fields) from the JSONL file; an AlignlabError naming the line and column."""
    path = Path(cfg.data)
    if not path.is_file():
        raise AlignlabError(f"passk: data file {cfg.data!r} not found")
    prompts: list[Any] = []
    fields: dict[str, list[Any]] = {f: [] for f in cfg.fields}
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines[cfg.offset:], start=cfg.offset + 1):
        if len(prompts) >= cfg.limit:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AlignlabError(f"passk: {cfg.data}:{lineno}: not JSON ({e.msg})") from None
        for col in [cfg.prompt_field, *cfg.fields]:
            if col not in row:
                raise AlignlabError(f"passk: {cfg.data}:{lineno}: no field {col!r} (has {sorted(row)})")
        text = str(row[cfg.prompt_field])
        system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        prompts.append(system + [{"role": "user", "content": text}] if cfg.chat else text)
        for f in cfg.fields:
            fields[f].append(row[f])
    if not prompts:
        raise AlignlabError(f"passk: {cfg.data} has no problems after offset {cfg.offset}")
    return prompts, fields


def run(cfg: PassKConfig) -> dict[str, Any]:
    from alignlab.eval.passk import evaluate_passk
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.rewards import get_reward
    from alignlab.rollout.verify_math import extract_final_answer

    if cfg.n < 1 or any(not 1 <= k <= cfg.n for k in cfg.k):
        raise AlignlabError(f"passk: need n >= 1 and every k in [1, n] (n={cfg.n}, k={cfg.k})")
    prompts, fields = load_problems(cfg)
    reward_fn = get_reward(cfg.reward, **cfg.reward_options)
    model, tokenizer = load_model(cfg.model, device=cfg.device), load_tokenizer(cfg.model)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              seed=cfg.seed, batch_size=cfg.batch_size)
    result = evaluate_passk(model, tokenizer, prompts, fields, reward_fn, n=cfg.n, ks=cfg.k, sampling=sampling,
                            extract=extract_final_answer if cfg.majority else None, threshold=cfg.threshold)
    result = {"model": cfg.model, "data": cfg.data, "reward": cfg.reward, **result}
    text = json.dumps(result)
    print(text, flush=True)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n", encoding="utf-8")
    return result


config_command("passk", "pass@k and maj@k of a model on a JSONL file of problems, scored by a math/code reward.",
               PassKConfig, run)
