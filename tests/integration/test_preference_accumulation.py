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


def test_online_dpo_with_an_nll_term_gives_the_same_weights_with_one_or_two_micro_batches():
    """Online DPO's update hands its micro-batches the step's totals too (a filler micro-batch counts nothing).
    tiny-random with its EOS row scaled up ends answers early, so chosen answers differ in length (3.5 and
    10.5 tokens on average): before, two steps ended 4e-3 apart; now 1e-6."""
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    tok, runs = load_tokenizer("tiny-random"), []
    for grad_accum in (1, 2):
        model = load_model("tiny-random")
        with torch.no_grad():
            model.get_output_embeddings().weight[tok.eos_token_id] *= 30.0
        res = alignlab.online_dpo(model=model, tokenizer=tok, data="builtin:reverse", num_prompts=16, max_steps=2,
                                  reward=lambda prompts, completions, **_: [float(sum(map(ord, c)) % 7)
                                                                            for c in completions],
                                  batch_size=4, grad_accum=grad_accum, max_new_tokens=12, loss=["dpo", "sft"],
                                  eval_prompts=0, progress="none", cpu_threads=1, learning_rate=1e-3,
                                  output_dir=None)
        assert [r["pairs"] for r in res.metrics if "pairs" in r][0] >= 2  # pairs to split, or it means nothing
        runs.append({k: v.detach().clone() for k, v in res.model.state_dict().items()})
    assert max(float((runs[0][k] - runs[1][k]).abs().max()) for k in runs[0]) < 1e-5


def test_ppo_critic_starts_from_a_reward_model_saved_as_an_adapter(tmp_path):
    """A LoRA reward model saved unmerged loads as a frozen peft scorer: the critic merges it (its values are the
    reward model's), then takes the run's own fresh adapter; an in-memory policy needs value_model."""
    import pytest
    import torch

    peft = pytest.importorskip("peft")
    from alignlab.errors import AlignlabError
    from alignlab.models.heads import load_scorer, values
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rl.config import PPOConfig
    from alignlab.rl.critic import build_critic

    torch.manual_seed(0)
    rm = load_scorer("tiny-random")
    rm = peft.get_peft_model(rm, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["score"]))
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    rm.save_pretrained(tmp_path / "rm")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "rm")
    ids = torch.randint(3, 200, (2, 7))
    with torch.no_grad():
        want = values(rm.eval(), ids, torch.ones_like(ids))
    critic, _ = build_critic(PPOConfig(model="tiny-random", value_model=str(tmp_path / "rm"), lora=None), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(values(critic.eval(), ids, torch.ones_like(ids)), want, atol=1e-5, rtol=0)
    with pytest.raises(AlignlabError, match="value_model"):
        alignlab.ppo(model=load_model("tiny-random"), tokenizer=load_tokenizer("tiny-random"), data="builtin:reverse",
                     reward="exact_match", max_steps=1, output_dir=None, progress="none")
