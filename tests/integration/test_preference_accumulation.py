"""A DPO-family mix with a chosen-NLL term (sft, RPO, ORPO) trains the same whatever grad_accum is."""

import alignlab


def test_a_dpo_plus_sft_mix_gives_the_same_weights_with_one_or_two_micro_batches():
    """The loop weighs micro-batches by pairs, the NLL term is a token mean: with chosen answers of 1 and 13
    tokens, a micro-batch's own token mean weighed by its pairs is not the step's token mean (the weights of two
    AdamW steps were 2e-3 apart). The step's chosen-token total (train.loop.step_totals) makes them equal."""
    pairs = [{"prompt": f"Q{i}:", "chosen": ("yes " * (1 + 12 * (i % 2))).strip(), "rejected": "no"} for i in range(8)]
    runs = []
    for grad_accum in (1, 2):
        res = alignlab.dpo(model="tiny-random", data=pairs, output_dir=None, max_steps=2, batch_size=4,
                           grad_accum=grad_accum, loss=["dpo", "sft"], loss_weights=[1.0, 1.0], eval_split=0.0,
                           progress="none", cpu_threads=1, learning_rate=1e-3, seed=0)
        runs.append({k: v.detach().clone() for k, v in res.model.state_dict().items()})
    assert max(float((runs[0][k] - runs[1][k]).abs().max()) for k in runs[0]) < 1e-5
