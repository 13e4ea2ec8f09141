"""The input embedding's kept-block backward (ops/embedding.py): nn.Embedding's gradient bit for bit."""

from __future__ import annotations

import pytest
import torch

from alignlab.ops.buffers import _LOCAL, reused_buffers
from alignlab.ops.embedding import keep_embedding_grad


class _TiedLM(torch.nn.Module):
    """An embedding and a head sharing one weight (SmolLM2's layout), or separate weights."""

    def __init__(self, tied: bool, padding_idx: int | None):
        super().__init__()
        self.emb = torch.nn.Embedding(300, 24, padding_idx=padding_idx)
        self.head = torch.nn.Linear(24, 300, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(torch.tanh(self.emb(ids))), -1).sum()


def _plain_and_kept(tied: bool, padding_idx: int | None = None) -> tuple[_TiedLM, _TiedLM]:
    """Two copies of one model, the second with the kept-block embedding backward."""
    plain, kept = _TiedLM(tied, padding_idx), _TiedLM(tied, padding_idx)
    kept.load_state_dict(plain.state_dict())
    assert keep_embedding_grad(kept)
    return plain, kept


def _backwards(loss, plain: _TiedLM, kept: _TiedLM, times: int) -> dict:
    """`times` accumulated backwards of loss(plain), then of loss(kept) inside `reused_buffers`; the kept buffers as
    they were inside."""
    for _ in range(times):
        loss(plain).backward()
    with reused_buffers():
        for _ in range(times):
            loss(kept).backward()
        return dict(_LOCAL.buffers)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_kept_embedding_grad_equals_nn_embedding_bit_for_bit(tied, padding_idx):
    """Token ids with many repeats (each row's additions in aten's order), more than 3,000 of them (aten's CPU
    kernel switches strategy there), the padding row skipped; three accumulated backwards, tied to a head or
    not: the same .grad as nn.Embedding exactly, and the kept block is used (it holds the last gradient)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (3, 1200))
    ids[0, :7] = 2
    plain, kept = _plain_and_kept(tied, padding_idx)
    buffers = _backwards(lambda m: m(ids), plain, kept, 3)
    block = [v for k, v in buffers.items() if k[0] == "gradient_block"]
    assert len(block) == 1 and block[0].abs().sum() > 0
    assert torch.equal(kept.emb.weight.grad, plain.emb.weight.grad)
    assert torch.equal(kept.head.weight.grad, plain.head.weight.grad)
    if padding_idx is not None and not tied:
        assert kept.emb.weight.grad[padding_idx].abs().sum() == 0


def test_kept_embedding_is_plain_outside_the_scope_and_when_frozen():
    """Outside reused_buffers, without grad or with a frozen weight the module is nn.Embedding itself."""
    model = _TiedLM(True, None)
    keep_embedding_grad(model)
    ids = torch.randint(0, 300, (2, 9))
    assert "Embedding" in type(model.emb(ids).grad_fn).__name__ and "Kept" not in type(model.emb(ids).grad_fn).__name__
    with reused_buffers():
        assert "Kept" in type(model.emb(ids).grad_fn).__name__
        with torch.no_grad():
            assert model.emb(ids).grad_fn is None
        model.emb.weight.requires_grad_(False)
        assert model.emb(ids).grad_fn is None
    assert not keep_embedding_grad(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("tied", [True, False])
def test_kept_embedding_grad_with_a_chunked_head_equals_nn_embedding(tied):
    """With `chunked_token_logprobs` as the head, two accumulated backwards of 3,600 tokens from 12 ids (many
    repeats per row, past aten's 3,000-token switch): nn.Embedding's gradients exactly. Untied, the embedding's
    gradient lives in the head's logits block (idle by then); tied, the head's gradient is handed to the embedding,
    which adds its tokens' rows to it (no dense block)."""
    from alignlab.ops.logprobs import chunked_token_logprobs

    torch.manual_seed(1)
    ids, labels = torch.randint(0, 12, (3, 1200)), torch.randint(0, 300, (3600,))

    def loss(m: _TiedLM) -> torch.Tensor:
        return chunked_token_logprobs(torch.tanh(m.emb(ids)).reshape(3600, 24), m.head.weight, labels, 1024).sum()

    plain, kept = _plain_and_kept(tied)
    blocks = {k[1] for k in _backwards(loss, plain, kept, 2) if k[0] == "gradient_block"}
    assert blocks == ({"tied_head_grad"} if tied else {"logits"})
    assert torch.equal(kept.emb.weight.grad, plain.emb.weight.grad)
    assert torch.equal(kept.head.weight.grad, plain.head.weight.grad)


def _big_adds(loss_fn) -> tuple[int, int]:
    """(out-of-place, in-place) additions of whole [300, 24] tensors during loss_fn()'s forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = [0, 0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor) and tuple(args[0].shape) == (300, 24):
                counts[func is torch.ops.aten.add_.Tensor] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        loss_fn()
    return counts[0], counts[1]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
def test_a_tied_heads_gradient_joins_the_embeddings_bit_for_bit(autocast, heads):
    """The tied chunked head hands its weight gradient to the embedding call its hidden states came from: over three
    accumulated backwards (several chunks each; one or two heads on the same hidden states; float32 or bf16
    autocast) `.grad` is the plain path's exactly, autograd no longer sums two [V, H] gradients out of place (the
    plain path does, once per backward), and a hook on the weight sees one gradient per backward."""
    from alignlab.ops.logprobs import chunked_token_logprobs

    torch.manual_seed(2)
    ids, labels = torch.randint(0, 300, (2, 40)), torch.randint(0, 300, (80,))
    labels[::7] = -100

    def loss(m: _TiedLM) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = torch.tanh(m.emb(ids)).reshape(80, 24)
            out = chunked_token_logprobs(h, m.emb.weight, labels, 16).sum()
            if heads == 2:
                out = out + 0.5 * chunked_token_logprobs(h * 2, m.emb.weight, labels.flip(0), 32).sum()
        return out

    plain, kept = _plain_and_kept(True)
    seen = []
    kept.emb.weight.register_hook(lambda g: seen.append(g.shape))
    plain_adds = [_big_adds(lambda: loss(plain).backward()) for _ in range(3)]
    with reused_buffers():
        kept_adds = [_big_adds(lambda: loss(kept).backward()) for _ in range(3)]
        assert any(k[0] == "tied_head_grad" for k in _LOCAL.buffers)
    assert torch.equal(kept.emb.weight.grad, plain.emb.weight.grad)
    assert [a for a, _ in plain_adds] == [heads, heads, heads]  # autograd's out-of-place sum(s)
    assert [a for a, _ in kept_adds] == [0, 0, 0]
    assert seen == [(300, 24)] * 3


def test_a_tie_consumed_by_a_first_backward_leaves_a_second_one_to_autograd():
    """Backward twice over a retained graph: the first pass hands the head's gradient to the embedding, the second
    (the tie consumed) returns it through autograd; `.grad` equals the plain path's after both."""
    from alignlab.ops.logprobs import chunked_token_logprobs

    torch.manual_seed(3)
    ids, labels = torch.randint(0, 300, (1, 50)), torch.randint(0, 300, (50,))

    def twice(m: _TiedLM) -> None:
        out = chunked_token_logprobs(torch.tanh(m.emb(ids))[0], m.emb.weight, labels, 1024).sum()
        out.backward(retain_graph=True)
        out.backward()

    plain, kept = _plain_and_kept(True)
    twice(plain)
    with reused_buffers():
        twice(kept)
    assert torch.equal(kept.emb.weight.grad, plain.emb.weight.grad)


def test_an_untied_head_or_one_outside_the_scope_finds_no_tie():
    """find_tie: only a head on the weight of the embedding call its hidden states came from, inside the scope."""
    from alignlab.ops.embedding import find_tie

    tied, untied = _TiedLM(True, None), _TiedLM(False, None)
    for m in (tied, untied):
        keep_embedding_grad(m)
    ids = torch.randint(0, 300, (1, 5))
    assert find_tie(torch.tanh(tied.emb(ids)), tied.emb.weight) is None  # outside reused_buffers
    with reused_buffers():
        h = torch.tanh(tied.emb(ids))
        assert find_tie(h, tied.emb.weight) is not None
        assert find_tie(h.detach(), tied.emb.weight) is None
        assert find_tie(torch.tanh(untied.emb(ids)), untied.head.weight) is None
        h.sum().backward()  # the embedding's backward consumes its tie
        assert find_tie(h, tied.emb.weight) is None


def test_two_optimizer_steps_of_a_large_tied_model_reuse_its_gradient_block_and_match_the_plain_path():
    """A [9000, 1000] tied embedding (36 MB, above the heap's blocks) trained two steps through the step core with
    two micro-batches each: the second step accumulates into the first step's gradient block (same memory), and the
    weights after both steps are the plain path's bit for bit."""
    from alignlab.ops.logprobs import chunked_token_logprobs
    from alignlab.train.step import optimizer_step

    def model() -> torch.nn.Module:
        torch.manual_seed(4)
        m = torch.nn.Module()
        m.emb = torch.nn.Embedding(9000, 1000)
        m.get_input_embeddings = lambda: m.emb
        return m

    ids = torch.randint(0, 9000, (2, 2, 30))
    ptrs: list[int] = []

    def train(m: torch.nn.Module) -> None:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        m.emb.weight.register_post_accumulate_grad_hook(lambda p: ptrs.append(p.grad.data_ptr()))

        def forward(x: torch.Tensor):
            return lambda: (-chunked_token_logprobs(torch.tanh(m.emb(x[:-1])), m.emb.weight, x[1:], 16).mean(), {})

        for step in range(2):
            optimizer_step(opt, [forward(ids[step, i]) for i in range(2)], [1.0, 1.0], total=2.0)

    plain, kept = model(), model()
    keep_embedding_grad(kept)
    train(plain)
    ptrs.clear()
    with reused_buffers():
        train(kept)
    assert torch.equal(kept.emb.weight, plain.emb.weight)
    assert len(ptrs) == 4 and len(set(ptrs)) == 1


@pytest.mark.parametrize("tied", [True, False])
def test_two_forwards_before_one_backward_keep_each_embedding_gradient(tied):
    """Two embedding calls on one weight before one backward: the later call's backward runs before the earlier
    call's head, and autograd holds its gradient until the earlier call's arrives; the kept blocks that head reuses
    must not be that gradient (it is handed a copy). Three such backwards: nn.Embedding's gradients, exactly when
    untied; tied, each call's head and embedding gradients are summed first and autograd then adds the two sums (it
    added the four one by one), so equal to rounding (the training loops make one embedding call per backward)."""
    from alignlab.ops.logprobs import chunked_token_logprobs

    torch.manual_seed(5)
    ids, labels = torch.randint(0, 300, (2, 60)), torch.randint(0, 300, (2, 60))

    def loss(m: _TiedLM) -> torch.Tensor:
        return sum(chunked_token_logprobs(torch.tanh(m.emb(ids[i])), m.head.weight, labels[i], 16).sum()
                   for i in range(2))

    plain, kept = _plain_and_kept(tied)
    _backwards(loss, plain, kept, 3)
    same = torch.equal if not tied else lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert same(kept.emb.weight.grad, plain.emb.weight.grad)
    assert same(kept.head.weight.grad, plain.head.weight.grad)
