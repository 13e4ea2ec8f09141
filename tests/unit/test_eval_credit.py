"""Per-token implicit reward (eval/credit.py): beta * (log pi - log pi_ref) per completion token.

The check that matters: the tokens of a completion sum to the sequence-level DPO reward the training step
computes, beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5), here taken from a different
code path: the prefix-shared pair batch (data.pairs), train.preference.sequence_logps with the disabled-adapter
reference, and the registry's `dpo` loss function's chosen/rejected rewards.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rollout_tiny import tiny_lm  # noqa: E402

from alignlab.data.pairs import PairCollator  # noqa: E402
from alignlab.data.tokenize import TokenizedPair  # noqa: E402
from alignlab.errors import AlignlabError  # noqa: E402
from alignlab.eval.credit import completion_logps, implicit_rewards, render_html, render_rich  # noqa: E402
from alignlab.losses import get_loss_spec  # noqa: E402
from alignlab.models.lora import LoraConfig, apply_lora  # noqa: E402
from alignlab.train.preference import AdapterReference, sequence_logps  # noqa: E402


def _lora_policy(seed: int = 0, scale: float = 0.2):
    """The tiny model with LoRA adapters whose B matrices are random (not 0), so policy != reference."""
    model, tok = tiny_lm(seed)
    policy = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy.eval(), tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_tokens_sum_to_the_dpo_sequence_reward_of_the_training_step():
    policy, tok = _lora_policy()
    beta = 0.3
    prompt, chosen, rejected = _ids(tok, "The film was"), _ids(tok, " great fun!") + [2], _ids(tok, " dull.") + [2]
    credits = implicit_rewards(policy, tok, [prompt, prompt], [chosen, rejected], beta=beta)
    batch = PairCollator(0, "prefix")([TokenizedPair(prompt, chosen, rejected)])
    with torch.no_grad():
        pol, _ = sequence_logps(policy, batch)
    ref = AdapterReference().logps(policy, batch)
    _, r_chosen, r_rejected = get_loss_spec("dpo").fn(pol[:1], pol[1:], ref[:1], ref[1:], beta=beta)
    assert credits[0].total == pytest.approx(float(r_chosen), abs=1e-5)
    assert credits[1].total == pytest.approx(float(r_rejected), abs=1e-5)
    assert len(credits[0].rewards) == len(chosen) and credits[0].tokens[-1] == "</s>"
    assert max(abs(r) for r in credits[0].rewards) > 1e-3  # the adapter really changed the policy


def test_each_token_is_beta_times_its_log_ratio_and_scales_with_beta():
    """r_t = beta * (log pi_t - log pi_ref_t): beta 0.5 gives exactly 5x the beta 0.1 credits."""
    policy, tok = _lora_policy(1)
    prompt, comp = _ids(tok, "abc"), _ids(tok, "defgh")
    small = implicit_rewards(policy, tok, [prompt], [comp], beta=0.1)[0]
    big = implicit_rewards(policy, tok, [prompt], [comp], beta=0.5)[0]
    for a, b, lp, lr in zip(small.rewards, big.rewards, small.policy_logps, small.ref_logps):
        assert a == pytest.approx(0.1 * (lp - lr), abs=1e-9)
        assert b == pytest.approx(5 * a, abs=1e-7)


def test_policy_equal_to_reference_gives_zero_credit():
    """A fresh adapter (B = 0) computes the base model exactly: every token's credit is 0."""
    model, tok = tiny_lm(2)
    policy = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    credits = implicit_rewards(policy, tok, [_ids(tok, "hi")], [_ids(tok, " there")], beta=1.0)
    assert credits[0].rewards == [0.0] * len(credits[0].rewards)


def test_completion_logps_match_the_plain_forward_with_and_without_padding():
    """Batched right-padded scoring equals one-row scoring (log p of each completion token)."""
    model, tok = tiny_lm(3)
    prompts = [_ids(tok, "a"), _ids(tok, "a much longer prompt")]
    comps = [_ids(tok, "xyz"), _ids(tok, "q")]
    batched = completion_logps(model, prompts, comps, pad_id=0)
    for p, c, got in zip(prompts, comps, batched):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0].float()
        want = [torch.log_softmax(logits[len(p) - 1 + i], -1)[t].item() for i, t in enumerate(c)]
        assert got == pytest.approx(want, abs=1e-5)


def test_separate_reference_model_and_bad_beta():
    model, tok = tiny_lm(4)
    ref, _ = tiny_lm(5)
    credit = implicit_rewards(model, tok, [_ids(tok, "ab")], [_ids(tok, "cd")], beta=1.0, reference=ref)[0]
    assert credit.total == pytest.approx(sum(credit.policy_logps) - sum(credit.ref_logps), abs=1e-9)
    with pytest.raises(AlignlabError, match="beta"):
        implicit_rewards(model, tok, [[5]], [[6]], beta=0.0)
    with pytest.raises(AlignlabError, match="adapter"):  # no LoRA and no reference: nothing to compare with
        implicit_rewards(model, tok, [[5]], [[6]], beta=1.0)


def test_renderings_escape_text_and_colour_by_sign():
    policy, tok = _lora_policy(6)
    credits = implicit_rewards(policy, tok, [_ids(tok, "x")], [_ids(tok, "<b>&")], beta=1.0)
    page = render_html(credits, ["<script>"])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert ">&lt;</span>" in page and ">&amp;</span>" in page  # each token piece escaped
    assert page.count("<span title=") == len(credits[0].tokens)
    from rich.console import Console

    console = Console(record=True, width=80, color_system="truecolor")
    render_rich(credits, ["x"], console=console)
    assert "implicit reward" in console.export_text()


def test_completion_logps_refuse_an_empty_prompt():
    # the slice started at -1: the row got one value (the last token's) for a 12-token completion
    with pytest.raises(AlignlabError, match="at least one prompt token"):
        completion_logps(tiny_lm(), [[], [5, 6]], [[7] * 12, [8, 9]], pad_id=0)


def test_untrained_tokens_of_a_multi_turn_row_carry_no_credit(tmp_path):
    # explain scored a messages row from its first trained token to the end: the later user turn and template
    # tokens were coloured and summed into the "implicit reward" the loss never trains
    import argparse
    import json

    from alignlab.data.sources import load_rows
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.recipes.demo_commands import _examples

    policy, tok = _lora_policy()
    rows = tmp_path / "chat.jsonl"
    rows.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]}) + "\n")
    args = argparse.Namespace(data=str(rows), data_format=None, columns=None, on_bad_row="error", limit=None,
                              prompt=None, completion=None, max_length=None)
    _, prompts, comps, trained = _examples(args, tok)
    labels = tokenize_sft(load_rows(rows).rows[0], tok, None).labels
    assert trained[0] == [lab != -100 for lab in labels[len(prompts[0]):]] and not all(trained[0])
    full = implicit_rewards(policy, tok, prompts, comps, beta=0.5)[0]
    credit = implicit_rewards(policy, tok, prompts, comps, beta=0.5, trained=trained)[0]
    assert credit.total == pytest.approx(sum(r for r, t in zip(full.rewards, trained[0]) if t), abs=1e-9)
    assert all(r == 0.0 for r, t in zip(credit.rewards, trained[0]) if not t) and credit.total != full.total
    assert 'style="color:#777"' in render_html([credit])  # shown uncoloured


def test_explain_cuts_rows_as_training_did_with_max_length(tmp_path):
    """Rows were scored whole: a row past the run's max_length was summed over tokens training never saw (a
    1,068-token row for a run trained at 128). --max-length cuts them as the data layer cut them in training."""
    import argparse
    import json

    from alignlab.data.sources import load_rows
    from alignlab.data.tokenize import tokenize_pair
    from alignlab.recipes.demo_commands import _examples

    _, tok = _lora_policy()
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"prompt": "word " * 40, "chosen": "good " * 30, "rejected": "bad " * 20}) + "\n")
    args = argparse.Namespace(data=str(rows), data_format=None, columns=None, on_bad_row="error", limit=None,
                              prompt=None, completion=None, max_length=None)
    whole = _examples(args, tok)
    cut = _examples(argparse.Namespace(**{**vars(args), "max_length": 32}), tok)
    pair = tokenize_pair(load_rows(rows).rows[0], tok, 32)
    assert cut[1][0] == pair.prompt_ids and cut[2] == [pair.chosen_ids, pair.rejected_ids]
    assert len(cut[1][0]) + len(cut[2][0]) <= 32 < len(whole[1][0]) + len(whole[2][0])
