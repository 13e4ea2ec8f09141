"""ops/buffers.py: the training loops' memory-reuse scope."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from alignlab.ops import buffers


def _faults_of(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux") or buffers._glibc() is None, reason="glibc's malloc only")
def test_reused_buffers_keeps_freed_memory_mapped():
    """A block freed inside the scope is reused by the next one without fresh zero-filled pages (glibc otherwise
    maps blocks above its threshold anew and unmaps them on free, or trims its heap: a page fault per 4 KB page
    touched)."""

    def step():  # an 8 MB activation-sized tensor written and freed, as in every training step
        x = torch.empty(2 * 2**20)
        x.fill_(1.0)
        del x

    with buffers.reused_buffers():
        for _ in range(16):  # the heap settles (torch's 64-byte aligned requests fragment it for a few rounds)
            step()
        assert max(_faults_of(step) for _ in range(4)) < 200  # 2,048 pages touched each time
        assert buffers._KEEPING[0] == 1
    assert buffers._KEEPING[0] == 0


def test_a_large_gradient_block_is_reused_only_while_nothing_else_holds_it():
    """keep_gradients/reuse_gradient: a gradient above the heap's 32 MB blocks comes back zeroed as `.grad` (same
    memory), a small one is left to the allocator; a block someone still holds, whole or through a view, is not
    reused (their tensor keeps its values); outside `reused_buffers` nothing is kept."""
    big, small = torch.nn.Parameter(torch.zeros(9000, 1000)), torch.nn.Parameter(torch.zeros(10))  # 36 MB, 40 B
    with buffers.reused_buffers():
        # only a gradient some backward asks back is kept: every other large one stayed alive through the next
        # step beside its fresh one (a second copy of an untied head's or a big model's gradients at the peak)
        other = torch.nn.Parameter(torch.zeros(9000, 1000))
        other.grad = torch.ones_like(other)
        buffers.keep_gradients([other])
        assert not [k for k in buffers._LOCAL.buffers if k[0] == "grad"]
        buffers.reuse_gradient(big), buffers.reuse_gradient(small)  # the first step's backward: nothing kept yet
        big.grad, small.grad = torch.ones_like(big), torch.ones_like(small)
        ptr = big.grad.data_ptr()
        buffers.keep_gradients([big, small])
        big.grad = small.grad = None
        buffers.reuse_gradient(small)
        buffers.reuse_gradient(big)
        assert small.grad is None
        assert big.grad.data_ptr() == ptr and not big.grad.any()
        for hold in (lambda g: g, lambda g: g[1:]):
            big.grad.fill_(3.0)
            held = hold(big.grad)
            buffers.keep_gradients([big])
            big.grad = None
            buffers.reuse_gradient(big)
            assert big.grad is None and held.eq(3.0).all()
            big.grad = torch.ones_like(big)
            del held
    buffers.keep_gradients([big])
    big.grad = None
    buffers.reuse_gradient(big)
    assert big.grad is None


def test_weights_changed_by_a_callback_after_an_evaluation_are_not_trained_on_as_stale_casts(tmp_path):
    # an on_eval callback rescaling the weights through p.data: the next step reused the bf16 casts the evaluation
    # made in the same optimizer step (p.data writes bump no version counter, `with no_grad(): p.mul_` does): the
    # two runs ended 0.0115 apart
    import functools

    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.data.collate import Collator
    from alignlab.train import TrainConfig, evaluate, train
    from alignlab.train.callbacks import Callback
    from alignlab.train.steps import chunked_causal_lm_step

    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(1, 97, (12,), generator=g).tolist()), "labels": ids} for _ in range(16)]
    step = functools.partial(chunked_causal_lm_step, chunk_size=8)

    class Rescale(Callback):
        def on_eval(self, s, metrics):
            for p in model.parameters():
                if via_data:
                    p.data.mul_(0.9)
                else:
                    with torch.no_grad():
                        p.mul_(0.9)

    final = {}
    for via_data in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
        cfg = TrainConfig(output_dir=str(tmp_path / str(via_data)), max_steps=3, batch_size=4, learning_rate=1e-2,
                          progress="none", device="cpu", bf16=True, eval_steps=1, lr_scheduler="constant")
        ev = lambda m: evaluate(m, step, data[:4], Collator(0, packing=True), batch_size=4, device="cpu")  # noqa: E731
        train(cfg, model, step, data, Collator(0, packing=True), eval_fn=ev, callbacks=[Rescale()])
        final[via_data] = model.state_dict()
    assert all(torch.equal(final[True][k], final[False][k]) for k in final[True])


def test_a_frozen_cast_is_not_reused_by_a_later_run_after_the_weight_was_trained():
    """A frozen head's bf16 cast was kept for the whole process, keyed on the weight's version counter, which a fused
    AdamW step (or a write through .data) does not bump: LoRA DPO, then full SFT of the merged model, then LoRA DPO
    again in one process scored chosen at -40.56 against -24.40 with the head's old cast."""
    from alignlab.ops.buffers import frozen_cast

    w = torch.randn(8, 4)
    first = frozen_cast(w, torch.bfloat16)
    assert frozen_cast(w, torch.bfloat16) is first  # kept while nothing changed
    w.data.add_(1.0)  # as a fused optimizer step: the version counter stays
    with buffers.reused_buffers():  # the next training run
        assert torch.equal(frozen_cast(w, torch.bfloat16), w.to(torch.bfloat16))
        w.data.add_(1.0)
    assert torch.equal(frozen_cast(w, torch.bfloat16), w.to(torch.bfloat16))  # after it
