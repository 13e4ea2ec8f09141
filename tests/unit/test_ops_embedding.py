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


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_kept_embedding_grad_equals_nn_embedding_bit_for_bit(tied, padding_idx):
    """Token ids with many repeats (each row's additions in aten's order), more than 3,000 of them (aten's CPU
    kernel switches strategy there), the padding row skipped; three accumulated backwards, tied to a head or
    not: the same .grad as nn.Embedding exactly, and the kept block is used (it holds the last gradient)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (3, 1200))
    ids[0, :7] = 2
    plain, kept = _TiedLM(tied, padding_idx), _TiedLM(tied, padding_idx)
    kept.load_state_dict(plain.state_dict())
    assert keep_embedding_grad(kept)
    for _ in range(3):
        plain(ids).backward()
    with reused_buffers():
        for _ in range(3):
            kept(ids).backward()
        block = [v for k, v in _LOCAL.buffers.items() if k[0] == "gradient_block"]
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


def test_kept_embedding_grad_shares_the_chunked_heads_block_safely():
    """The embedding's gradient lives in the chunked LM head's logits block (idle by then): a tied model whose head
    is `chunked_token_logprobs`, trained over two accumulated backwards, gets nn.Embedding's gradients exactly."""
    from alignlab.ops.logprobs import chunked_token_logprobs

    torch.manual_seed(1)
    ids, labels = torch.randint(0, 300, (2, 40)), torch.randint(0, 300, (80,))

    def loss(m: _TiedLM) -> torch.Tensor:
        return chunked_token_logprobs(torch.tanh(m.emb(ids)).reshape(80, 24), m.emb.weight, labels, 16).sum()

    plain, kept = _TiedLM(True, None), _TiedLM(True, None)
    kept.load_state_dict(plain.state_dict())
    keep_embedding_grad(kept)
    for _ in range(2):
        loss(plain).backward()
    with reused_buffers():
        for _ in range(2):
            loss(kept).backward()
        assert any(k[0] == "gradient_block" for k in _LOCAL.buffers)
    assert torch.equal(kept.emb.weight.grad, plain.emb.weight.grad)
