"""`alignlab passk`: a one-command shorthand for an `alignlab eval` with one `passk` evaluation.

    alignlab passk model=smollm2-135m-instruct data=../shared/data/gsm8k/test.jsonl limit=200 n=8 k=[1,8]

The keys below become an EvalConfig (checkpoints: [model], one EvaluationSpec of kind passk, no report) and
eval/runner.py runs it, so both commands share the reading, sampling and scoring (eval/passk_eval.py). Each
record of ``data`` is a problem: ``prompt_field`` is the question (a user message when ``chat``), and the
``fields`` columns, which every record must have, go to the reward (``answer`` for ``math``/``gsm8k``, ``tests``
for ``code``) with the rows' other columns. Prints one JSON
object and writes it to ``output`` when set.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.cli import config_command


@dataclass
class PassKConfig:
    """`alignlab passk`: sample n answers per problem, score them, report pass@k / maj@k."""

    model: str = "tiny-random"
    """Model to evaluate: alias (tiny-random, smollm2-135m-instruct), checkpoint dir or hub id."""
    data: str = ""
    """File of problems (JSONL, JSON, CSV, parquet), read through a column mapping of prompt_field and answer."""
    prompt_field: str = "question"
    """Column holding the problem text."""
    fields: list[str] = field(default_factory=lambda: ["answer"])
    """Columns the reward needs (answer for math/gsm8k, tests for code): every record must have them (else an error
    naming the record); the reward receives them by name, beside the rows' other columns (as TRL passes them)."""
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


def eval_config(cfg: PassKConfig, output_dir: str) -> Any:
    """The EvalConfig this command runs: one passk evaluation of `model` on records [offset, offset + limit)."""
    from alignlab.eval.passk_eval import PassKSpec
    from alignlab.eval.runner import EvalConfig, EvaluationSpec
    from alignlab.rollout.generate import SamplingConfig

    columns = {"prompt": cfg.prompt_field, "chat": str(cfg.chat).lower()}
    if "answer" in cfg.fields:
        columns["answer"] = "answer"
    spec = EvaluationSpec(
        kind="passk", name="passk", data=cfg.data, columns=columns, data_offset=cfg.offset, data_limit=cfg.limit,
        on_bad_row="error", reward=cfg.reward, reward_options=cfg.reward_options,
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=cfg.seed, batch_size=cfg.batch_size),
        passk=PassKSpec(n=cfg.n, k=list(cfg.k), threshold=cfg.threshold, majority=cfg.majority,
                        fields=[f for f in cfg.fields if f != "answer"]))
    spec.validate()  # offset=-1 scored other problems than asked, silently
    spec.passk.validate()  # k=[] sampled every problem, then crashed with an IndexError
    return EvalConfig(checkpoints=[cfg.model], evaluations=[spec], output_dir=output_dir, device=cfg.device,
                      report=False)


def run(cfg: PassKConfig) -> dict[str, Any]:
    from rich.console import Console

    from alignlab.eval.runner import run as run_eval

    with tempfile.TemporaryDirectory() as tmp:
        payload = run_eval(eval_config(cfg, tmp), console=Console(stderr=True))
    details = {k: v for k, v in payload["results"][0]["details"].items() if k != "se"}
    result = {"model": cfg.model, "data": cfg.data, **details}
    text = json.dumps(result)
    print(text, flush=True)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n", encoding="utf-8")
    return result


config_command("passk", "pass@k and maj@k of a model on a file of problems, scored by a math/code reward (a "
               "shorthand for alignlab eval with one passk evaluation).",
               PassKConfig, run)
