"""`alignlab self-instruct`: grow an Alpaca-format instruction dataset from seed tasks (Wang et al. 2023).

Wiring only: seed tasks (the shipped set under alignlab/data/seed_tasks.jsonl, or `seed_tasks`), a chat
backend (a local model through our sampler, or any OpenAI-compatible endpoint), the pipeline in
`data.self_instruct`, and an atomic write of `[{instruction, input, output}, ...]` that `alignlab sft
data=FILE` reads as Alpaca. Stage counts are printed and saved beside the output as `<output>.counts.json`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from alignlab.errors import AlignlabError
from alignlab.files import write_text_atomic


@dataclass
class SelfInstructConfig:
    """`alignlab self-instruct`: where instructions come from and how they are filtered."""

    output: str = "self_instruct.json"
    """Alpaca-format JSON list written here (atomically); stage counts go to <output>.counts.json."""
    seed_tasks: str | None = None
    """JSONL/JSON of {instruction, input, output} seed tasks; null uses the 24 tasks shipped with alignlab."""
    model: str | None = None
    """Local generator: alias (smollm2-135m-instruct, tiny-random), HF dir or hub id. Exactly one of model
    and base_url."""
    base_url: str | None = None
    """OpenAI-compatible endpoint instead of a local model, e.g. http://127.0.0.1:8000/v1."""
    model_name: str = "alignlab"
    """base_url: the `model` field sent with each request."""
    api_key_env: str | None = None
    """base_url: NAME of the environment variable holding the API key (never the key itself)."""
    num_tasks: int = 100
    """Machine-made tasks to write (fewer if max_requests runs out first)."""
    max_requests: int = 400
    """Most instruction-generation requests in all (each asks for one new task)."""
    batch: int = 8
    """Instruction requests per round (the pool grows between rounds)."""
    in_context: int = 8
    """Tasks shown per request (the paper: 8)."""
    machine_in_context: int = 2
    """Of those, machine-made ones once the pool has some (the paper: 2)."""
    rouge_threshold: float = 0.7
    """Drop an instruction whose ROUGE-L F with any pooled instruction exceeds this (the paper: 0.7)."""
    min_words: int = 3
    """Drop instructions shorter than this many words."""
    max_words: int = 150
    """Drop instructions longer than this many words."""
    max_new_tokens: int = 256
    """Most tokens per generated reply (instruction or instance)."""
    temperature: float = 0.7
    """Sampling temperature of every request (the paper: 0.7)."""
    top_p: float = 0.5
    """Nucleus sampling mass (the paper: 0.5)."""
    seed: int = 0
    """Seed of the in-context sampling and of the local sampler (bumped every round)."""
    device: str = "auto"
    """Local model: cpu, cuda or auto."""
    timeout: float = 300.0
    """base_url: seconds before one request is abandoned (then retried)."""
    concurrency: int = 4
    """base_url: requests in flight at once."""

    def validate(self) -> None:
        if (self.model is None) == (self.base_url is None):
            raise AlignlabError("self-instruct: give exactly one of model (local) or base_url (endpoint)")
        if min(self.num_tasks, self.max_requests, self.batch, self.in_context, self.min_words) < 1:
            raise AlignlabError("self-instruct: num_tasks, max_requests, batch, in_context, min_words must be >= 1")
        if not 0 <= self.machine_in_context <= self.in_context or self.max_words < self.min_words:
            raise AlignlabError("self-instruct: need 0 <= machine_in_context <= in_context, min_words <= max_words")
        if not 0 < self.rouge_threshold <= 1 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise AlignlabError("self-instruct: rouge_threshold and top_p in (0, 1], temperature > 0")


def _chat(cfg: SelfInstructConfig):
    """conversations -> replies, with the sampler's seed moved on every call (fresh samples each round)."""
    from dataclasses import replace

    from alignlab.eval.backends import LocalBackend, OpenAIBackend
    from alignlab.rollout.generate import SamplingConfig

    if cfg.base_url:
        backend = OpenAIBackend(cfg.base_url, cfg.model_name, api_key_env=cfg.api_key_env,
                                max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, timeout=cfg.timeout,
                                concurrency=cfg.concurrency, seed=cfg.seed, top_p=cfg.top_p)
    else:
        from alignlab.models.load import load_model, load_tokenizer

        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=cfg.seed)
        backend = LocalBackend(load_model(cfg.model, device=cfg.device), load_tokenizer(cfg.model), sampling)
    calls = [0]

    def chat(conversations):
        calls[0] += 1
        if isinstance(backend, LocalBackend):
            backend.sampling = replace(backend.sampling, seed=cfg.seed + calls[0])
        else:
            backend.seed = cfg.seed + calls[0]
        return backend.chat_many(conversations)

    return chat


def run(cfg: SelfInstructConfig) -> dict:
    from alignlab.data.self_instruct import load_seed_tasks, self_instruct

    cfg.validate()
    seeds = load_seed_tasks(cfg.seed_tasks)
    res = self_instruct(_chat(cfg), seeds, target=cfg.num_tasks, max_requests=cfg.max_requests, batch=cfg.batch,
                        in_context=cfg.in_context, machine_in_context=cfg.machine_in_context,
                        rouge_threshold=cfg.rouge_threshold, min_words=cfg.min_words, max_words=cfg.max_words,
                        seed=cfg.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(cfg.output)
    write_text_atomic(out, json.dumps([t.alpaca() for t in res.tasks], indent=1, ensure_ascii=False))
    counts = {"seed_tasks": len(seeds), **dict(sorted(res.counts.items()))}
    out.with_name(out.name + ".counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    print("self-instruct stages: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"wrote {len(res.tasks)} Alpaca records to {out}")
    if not res.tasks:
        raise AlignlabError(f"self-instruct: no task survived the filters ({counts}); raise max_requests or use a "
                            "stronger generator")
    return counts
