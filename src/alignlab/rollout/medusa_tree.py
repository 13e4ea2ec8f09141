"""Medusa's candidate tree and its verification (Cai et al. 2024, Sec. 2.1.2 tree attention, Sec. 2.3.1 typical
acceptance): pure geometry and acceptance rules; rollout/speculative.py runs the model.

A tree is a list of paths of ranks: path (i_1, ..., i_d) is the candidate continuation "head 1's i_1-th most
likely token, then head 2's i_2-th, ..., head d's i_d-th" after the root (the base's own next token). Every
prefix of a path is a node too (the tree is closed under ancestors). All heads read the same hidden state, so
the tree is static: its mask and depths are built once, and each step only fills in the tokens.

One forward of the base over [root, nodes...] (BFS order, parents before children) with the positions
past + depth and a mask that lets each node see the cached context and its own ancestors only gives the
base's distribution after every candidate prefix at once. `walk` then accepts the longest path whose tokens
the base accepts (exact match with its argmax for greedy; the typical-acceptance rule for sampling), computing
the base's logits only at nodes whose whole prefix was accepted, one batch per depth: the LM head (the
V x H matrix, a fifth of SmolLM2's weights) is applied to a handful of rows rather than to every node.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError

__all__ = ["MedusaTree", "Verdict", "build_tree", "gather_cache", "sparse_paths", "tree_mask", "typical_accepts", "walk"]


def sparse_paths(nodes: int, top_k: int, depth: int) -> list[tuple[int, ...]]:
    """The `nodes` paths (ranks per head, depth <= `depth`, ranks < `top_k`) of highest prior score, where the
    prior of a path is prod_d 1 / (i_d + 2): the i-th candidate of any head is taken to be right with
    probability 1 / (i + 2), independently across heads. Medusa's sparse trees rank paths by head accuracies
    measured on data; this fixed prior gives the same shape (wide near the root, one deep top-1 spine) without
    a calibration set. top_k = 1 gives the top-1 chain of `depth` nodes."""
    if nodes < 1 or top_k < 1 or depth < 1:
        raise AlignlabError(f"medusa tree: nodes, top_k and depth must be >= 1 (got {nodes}, {top_k}, {depth})")
    out: list[tuple[int, ...]] = []
    heap: list[tuple[float, tuple[int, ...]]] = [(-1 / (i + 2), (i,)) for i in range(top_k)]
    while heap and len(out) < nodes:
        neg, path = heapq.heappop(heap)  # ties: the lexicographically smaller path first
        out.append(path)
        if len(path) < depth:
            for i in range(top_k):
                heapq.heappush(heap, (neg / (i + 2), path + (i,)))
    return out


@dataclass
class MedusaTree:
    """A static candidate tree. Node 0 is the root; nodes 1.. are the paths in BFS order."""

    paths: list[tuple[int, ...]]
    """paths[n]: ranks from the root to node n (paths[0] = ())."""
    parent: list[int]
    """parent[n]: the node one rank shorter (parent[0] = -1)."""
    children: list[list[int]]
    """children[n]: the nodes one rank longer, in rank order."""
    ancestors: Any
    """Bool tensor [N, N]: ancestors[i, j] = node j is node i or one of its ancestors (the tree attention)."""
    depth: Any
    """Long tensor [N]: each node's depth (its position offset after the root)."""

    @property
    def size(self) -> int:
        return len(self.paths)

    @property
    def max_depth(self) -> int:
        return max(len(p) for p in self.paths)

    @property
    def max_rank(self) -> int:
        return max((max(p) for p in self.paths if p), default=-1) + 1

    def tokens(self, root: int, head_topk: Sequence[Sequence[int]]) -> list[int]:
        """The tokens of every node: the root's, then for node (i_1..i_d) head d's i_d-th candidate."""
        return [root] + [head_topk[len(p) - 1][p[-1]] for p in self.paths[1:]]


def build_tree(paths: Sequence[Sequence[int]], num_heads: int) -> MedusaTree:
    """A MedusaTree from rank paths (any order; missing ancestors are added), checked against `num_heads`."""
    import torch

    full: set[tuple[int, ...]] = set()
    for p in paths:
        p = tuple(int(i) for i in p)
        if not p or min(p) < 0:
            raise AlignlabError(f"medusa tree: a path must be a non-empty list of ranks >= 0, got {list(p)}")
        if len(p) > num_heads:
            raise AlignlabError(f"medusa tree: path {list(p)} is {len(p)} deep; the heads guess {num_heads} tokens")
        full.update(p[:d] for d in range(1, len(p) + 1))
    order = [()] + sorted(full, key=lambda p: (len(p), p))
    index = {p: n for n, p in enumerate(order)}
    parent = [-1] + [index[p[:-1]] for p in order[1:]]
    children: list[list[int]] = [[] for _ in order]
    for n in range(1, len(order)):
        children[parent[n]].append(n)
    anc = torch.zeros(len(order), len(order), dtype=torch.bool)
    for n in range(len(order)):
        m = n
        while m >= 0:
            anc[n, m] = True
            m = parent[m]
    depth = torch.tensor([len(p) for p in order], dtype=torch.long)
    return MedusaTree(order, parent, children, anc, depth)


def tree_mask(tree: MedusaTree, past: int, model: Any, device: Any) -> Any:
    """The 4D mask [1, 1, N, past + N] of a tree forward: every cached position, then the node's ancestors.
    sdpa (and our span attention without a plan) takes it as bool (True = attend); eager adds it to the
    scores (0 where allowed, the dtype's min elsewhere), as the prefix-shared DPO forward builds it."""
    import torch

    from alignlab.models.attention import SPANS

    mask = torch.cat([torch.ones(tree.size, past, dtype=torch.bool), tree.ancestors], dim=1).to(device)[None, None]
    impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    if impl in ("sdpa", SPANS):
        return mask
    if impl == "eager":
        dtype = model.get_input_embeddings().weight.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    raise AlignlabError(f"speculative decoding: tree attention needs sdpa or eager attention, the model uses {impl!r}")


@dataclass
class Verdict:
    """What one verification accepted."""

    path: list[int]
    """Accepted nodes from the root (always there) down: the emitted tokens are theirs, in order."""
    logits: Any
    """The base's logits [V] after the last accepted node (the next root is drawn from them)."""
    row: int
    """That node's row in the last `logits_of` call (for anything computed beside the logits there)."""


def typical_accepts(logits: Any, tokens: Any, temperature: float, epsilon: float, delta: float,
                    filt: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    """Medusa's typical acceptance (Sec. 2.3.1): accept candidate x after a prefix when
    p(x) > min(epsilon, delta * exp(-H(p))), p = the base's distribution at the temperature (and `filt`'s
    top-k / top-p: a token the sampler could never draw is never accepted). logits [M, V], tokens [M, C].
    Returns (accepted [M, C] bool, log p(tokens) [M, C])."""
    import torch

    scaled = logits.float() / temperature
    if filt is not None:
        scaled = filt(scaled)
    logp = torch.log_softmax(scaled, -1)
    p = logp.exp()
    entropy = -(p * logp.nan_to_num(neginf=0.0)).sum(-1, keepdim=True)  # 0 * -inf terms count as 0
    threshold = torch.minimum(torch.full_like(entropy, epsilon), delta * torch.exp(-entropy))
    lp = logp.gather(-1, tokens)
    return lp.exp() > threshold, lp


def walk(tree: MedusaTree, tokens: list[int], hidden: Any, logits_of: Callable[[Any], Any],
         accept: Callable[[Any, Any], tuple[Any, Any]]) -> Verdict:
    """Accept the longest path of `tree` (tokens[n] at node n, final hidden states [N, H] of the tree forward).
    Depth by depth, the base's logits are formed (`logits_of`, hidden [M, H] -> [M, V]) only at nodes whose
    whole path was accepted, and each such node's children are judged by `accept(logits [M, V], child tokens
    [M, C]) -> (accepted, log-probs)`. Among the deepest accepted nodes the one with the highest summed
    log-prob wins (Medusa picks the longest accepted candidate; for greedy exact match there is only one)."""
    import torch

    alive, score = [0], {0: 0.0}
    logits = logits_of(hidden[[0]])
    while True:
        kids = [tree.children[n] for n in alive]
        width = max(len(k) for k in kids)
        if width == 0:
            break
        cand = torch.tensor([[tokens[c] for c in k] + [0] * (width - len(k)) for k in kids], device=logits.device)
        ok, lp = accept(logits, cand)
        nxt = [(c, score[n] + float(lp[r, j])) for r, (n, k) in enumerate(zip(alive, kids))
               for j, c in enumerate(k) if bool(ok[r, j])]
        if not nxt:
            break
        alive = [c for c, _ in nxt]
        score.update(nxt)
        logits = logits_of(hidden[alive])
    best = max(range(len(alive)), key=lambda r: score[alive[r]])
    path, n = [], alive[best]
    while n >= 0:
        path.append(n)
        n = tree.parent[n]
    return Verdict(path[::-1], logits[best], best)


def gather_cache(cache: Any, past: int, path: list[int]) -> None:
    """Keep only the accepted nodes' key/value columns: those of `path` (tree order, root first) move to
    past, past + 1, ... and every other node's columns are cut (full-attention layers only)."""
    import torch

    idx = None
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None:
            continue
        if idx is None:
            idx = torch.tensor(path, device=layer.keys.device) + past
        if path != list(range(len(path))):  # not a prefix of the tree order: move the columns into place
            layer.keys[..., past:past + len(path), :] = layer.keys[..., idx, :]
            layer.values[..., past:past + len(path), :] = layer.values[..., idx, :]
        layer.keys = layer.keys[..., :past + len(path), :]
        layer.values = layer.values[..., :past + len(path), :]
