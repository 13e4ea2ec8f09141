"""Monte-Carlo tree search on a DPO policy's implicit reward, with a budget in model calls.

Rafailov et al. 2024 ("From r to Q*", Sec. 4-5) show that a DPO policy pi, read against its reference
pi_ref, defines a per-token reward r_t = beta * log pi(y_t | s_t) / pi_ref(y_t | s_t) whose partial sums
are, up to a constant of the prompt, the optimal Q-value of the prefix: sum_{t<T} r_t = Q*(s_T) - V*(s_0)
in their token-level MDP (the value of the future is already inside the sum). A prefix therefore carries its
own value estimate, and a tree search needs no rollouts to evaluate a leaf.

The search (AlphaZero-style PUCT, Silver et al. 2017, with the policy as prior):
- a node is a completion prefix; expanding it costs two model calls (one forward of the policy, one of the
  reference, on prompt + prefix) and creates its `top_k` most likely children under the policy, each with
  prior pi(a | s) and value = parent value + beta * (log pi(a | s) - log pi_ref(a | s));
- a simulation walks down by argmax_c Q(c) + c_puct * beta * P(c) * sqrt(N(parent)) / (1 + N(c)), with
  Q(c) the mean of the values backed up through c (its own value before any visit), expands the leaf and
  backs up the best new child's value; children ending in EOS or at max_new_tokens are terminal;
- the search stops when the next expansion would pass `budget` calls; the answer is the terminal node with
  the highest value (the highest implicit reward of a complete answer). When no answer completed within the
  budget, the most-visited path is finished greedily by the policy alone, and those calls are counted too
  (`calls` in the result is everything spent, so methods can be compared at equal compute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["MCTSConfig", "SearchResult", "mcts_search", "run_search_command"]


@dataclass
class MCTSConfig:
    """Tree-search settings."""

    budget: int = 96
    """Most model calls (policy or reference forwards) spent by the search per prompt."""
    beta: float = 0.1
    """The DPO beta of the policy: scales the implicit reward (and the exploration term with it)."""
    top_k: int = 4
    """Children per expanded node: the policy's most likely next tokens."""
    c_puct: float = 1.0
    """Exploration weight of the PUCT rule (multiplied by beta so it is on the scale of the values)."""
    max_new_tokens: int = 24
    """Most tokens per completion (EOS included)."""

    def validate(self) -> None:
        if self.budget < 2 or self.top_k < 1 or self.max_new_tokens < 1 or self.beta <= 0 or self.c_puct < 0:
            raise AlignlabError("mcts: budget >= 2, top_k >= 1, max_new_tokens >= 1, beta > 0, c_puct >= 0")


@dataclass
class _Node:
    tokens: list[int]
    prior: float
    value: float
    terminal: bool
    children: list[_Node] | None = None
    visits: int = 0
    total: float = 0.0

    def q(self) -> float:
        return self.total / self.visits if self.visits else self.value


@dataclass
class SearchResult:
    """The chosen completion of one prompt."""

    completion_ids: list[int]
    text: str
    implicit_reward: float
    """sum_t beta * log pi / pi_ref over the completion (computed during the search)."""
    finish_reason: str
    """eos or length."""
    calls: int
    """Model calls spent on this prompt (search + any greedy completion)."""
    expansions: int
    stats: dict[str, Any] = field(default_factory=dict)


def _last_logprobs(model: Any, ids: list[int]):
    import torch

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    return torch.log_softmax(model(input_ids=x, use_cache=False, logits_to_keep=1).logits[0, -1].float(), -1)


class _Search:
    def __init__(self, policy, reference, prompt: list[int], eos: set[int], cfg: MCTSConfig):
        self.policy, self.reference, self.prompt, self.eos, self.cfg = policy, reference, prompt, eos, cfg
        self.calls = self.expansions = 0
        self.best: _Node | None = None

    def expand(self, node: _Node) -> float:
        lp = _last_logprobs(self.policy, self.prompt + node.tokens)
        lr = _last_logprobs(self.reference, self.prompt + node.tokens)
        self.calls += 2
        self.expansions += 1
        top = lp.topk(self.cfg.top_k)
        node.children = []
        for logp, tok in zip(top.values.tolist(), top.indices.tolist()):
            toks = node.tokens + [tok]
            child = _Node(toks, math.exp(logp), node.value + self.cfg.beta * (logp - float(lr[tok])),
                          tok in self.eos or len(toks) >= self.cfg.max_new_tokens)
            node.children.append(child)
            if child.terminal and (self.best is None or child.value > self.best.value):
                self.best = child
        return max(c.value for c in node.children)

    def select(self, node: _Node) -> _Node:
        scale = self.cfg.c_puct * self.cfg.beta * math.sqrt(max(node.visits, 1))
        return max(node.children, key=lambda c: c.q() + scale * c.prior / (1 + c.visits))

    def simulate(self, root: _Node) -> None:
        path, node = [root], root
        while node.children is not None and not node.terminal:
            node = self.select(node)
            path.append(node)
        value = node.value if node.terminal else self.expand(node)
        for n in path:
            n.visits += 1
            n.total += value

    def finish_greedily(self, root: _Node) -> _Node:
        """The most-visited path, then the policy's argmax tokens until EOS or max_new_tokens."""
        node = root
        while node.children:
            node = max(node.children, key=lambda c: (c.visits, c.q()))
        tokens, value = list(node.tokens), node.value
        while not (tokens and (tokens[-1] in self.eos or len(tokens) >= self.cfg.max_new_tokens)):
            lp = _last_logprobs(self.policy, self.prompt + tokens)
            lr = _last_logprobs(self.reference, self.prompt + tokens)
            self.calls += 2  # the reference call only measures the implicit reward of the answer
            tok = int(lp.argmax())
            value += self.cfg.beta * float(lp[tok] - lr[tok])
            tokens.append(tok)
        return _Node(tokens, 1.0, value, True)


def mcts_search(policy: Any, reference: Any, tokenizer: Any, prompts: Sequence[Any],
                cfg: MCTSConfig | None = None) -> list[SearchResult]:
    """One completion per prompt chosen by MCTS on the implicit reward of `policy` against `reference`."""
    import torch

    from alignlab.rollout.encode import encode_prompt, eos_token_ids

    cfg = cfg or MCTSConfig()
    cfg.validate()
    eos = set(eos_token_ids(policy, tokenizer))
    out = []
    was = policy.training, reference.training
    policy.eval(), reference.eval()
    try:
        with torch.inference_mode():
            for p in prompts:
                ids = encode_prompt(tokenizer, p)
                if not ids:
                    raise AlignlabError("mcts: a prompt encodes to no tokens")
                s = _Search(policy, reference, ids, eos, cfg)
                root = _Node([], 1.0, 0.0, False)
                simulations = 0
                # terminal selections cost no call, so simulations are capped too (4 per call of budget)
                while s.calls + 2 <= cfg.budget and simulations < 4 * cfg.budget:
                    s.simulate(root)
                    simulations += 1
                searched = s.calls
                best = s.best or s.finish_greedily(root)
                toks = best.tokens
                out.append(SearchResult(toks, tokenizer.decode(toks, skip_special_tokens=True), best.value,
                                        "eos" if toks[-1] in eos else "length", s.calls, s.expansions,
                                        {"simulations": simulations, "search_calls": searched,
                                         "completed_in_search": s.best is not None}))
    finally:
        policy.train(was[0]), reference.train(was[1])
    return out


def run_search_command(args: Any, model: Any, tokenizer: Any, prompts: list[Any]) -> int:
    """`generate --search mcts --ref REF`: search every prompt, print or write the answers (jsonl)."""
    import sys

    from alignlab.models.load import load_model
    from alignlab.rollout.sampling import prompt_messages, write_jsonl

    if not args.ref:
        raise AlignlabError("generate: --search mcts needs --ref (the reference the policy was trained against)")
    if args.n not in (None, 1):
        raise AlignlabError("generate: --search returns one completion per prompt; drop --n")
    given = {"budget": args.budget, "beta": args.beta, "top_k": args.search_top_k}
    cfg = MCTSConfig(max_new_tokens=args.max_new_tokens, **{k: v for k, v in given.items() if v is not None})
    results = mcts_search(model, load_model(args.ref, device=args.device), tokenizer, prompts, cfg)
    records = []
    for i, r in enumerate(results):
        msgs, chat = prompt_messages(prompts[i])
        records.append({"prompt": msgs if chat else "".join(m["content"] for m in msgs),
                        "completion": [{"role": "assistant", "content": r.text}] if chat else r.text,
                        "finish_reason": r.finish_reason, "num_tokens": len(r.completion_ids),
                        "implicit_reward": r.implicit_reward, "calls": r.calls, "prompt_index": i,
                        "sample_index": 0})
    if args.out:
        write_jsonl(args.out, records)
    else:
        for rec in records:
            text = rec["completion"][0]["content"] if isinstance(rec["completion"], list) else rec["completion"]
            print(f"--- prompt {rec['prompt_index']} (mcts, {rec['finish_reason']}, implicit reward "
                  f"{rec['implicit_reward']:.4f}, {rec['calls']} calls)\n{text}")
    calls = sum(r.calls for r in results)
    print(f"mcts: {len(results)} prompts, {calls} model calls ({calls / max(len(results), 1):.1f} per prompt), "
          f"mean implicit reward {sum(r.implicit_reward for r in results) / max(len(results), 1):.4f}",
          file=sys.stderr)
    return 0
