"""rollout.rewards: each built-in reward on hand-checked inputs, the registry and the import errors."""

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.rollout.rewards import extract_number, get_reward, reward_names, score


def test_registry_names():
    assert {"sentiment", "gsm8k", "format", "reward_model"} <= set(reward_names())


def test_sentiment_is_vader_compound():
    """VADER lexicon: 'good' has valence 1.9, compound = 1.9 / sqrt(1.9^2 + 15) = 0.4404 (4 d.p.);
    a sentence with no lexicon word scores 0.0; 'terrible' (-2.1) gives -2.1 / sqrt(2.1^2 + 15) = -0.4767."""
    fn = get_reward("sentiment")
    out = fn(["p"] * 3, ["good", "The table is in the room.", "terrible"])
    assert out == pytest.approx([0.4404, 0.0, -0.4767], abs=1e-4)


@pytest.mark.parametrize("text,value", [
    ("so the answer is 42.", 42.0),
    ("3 apples and 4 pears make 7", 7.0),
    ("Step 1: 10 + 5 = 15\n#### 1,234", 1234.0),
    ("#### 72\nthen I added 5", 72.0),               # '####' wins over a later number
    ("we get \\boxed{3/4} and 9 more", 0.75),        # \boxed wins over everything
    ("costs $1,000.50 in total", 1000.5),
    ("it is -3", -3.0),
    ("no numbers here", None),
    # a fraction anywhere after '####' replaced the answer; nested braces hid a \frac in \boxed
    ("#### 72\nCheck: 48 + 48/2 = 72", 72.0),
    ("#### 72\n(3/4 of the clips were sold in April)", 72.0),
    ("#### 3/4", 0.75),
    ("so \\boxed{\\frac{1}{4}}", 0.25),
    ("\\boxed{\\frac{36}{2}} and 3 more", 18.0),
    ("\\boxed{x = 3/4}", 0.75), ("#### r = 1/2", 0.5),  # a label before the fraction
])
def test_extract_number(text, value):
    assert extract_number(text) == value


def test_gsm8k_matches_reference_numerically():
    fn = get_reward("gsm8k")
    comps = ["The total is 18.", "#### 18.0", "I think 17", "nothing"]
    refs = ["Janet sells 16 - 3 - 4 = 9 eggs... #### 18", "18", "18", "18"]
    assert score(fn, ["q"] * 4, comps, answer=refs) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(AlignlabError, match="answer"):
        fn(["q"], ["1"])


def test_format_reward_default_and_custom_pattern():
    fn = get_reward("format")
    assert fn([""] * 3, ["work...\n#### 5", "#### 5 apples", "5"]) == [1.0, 0.0, 0.0]
    tagged = get_reward("format", pattern=r"<answer>.*</answer>", full_match=True)
    assert tagged([""] * 2, ["<answer>4</answer>", "x <answer>4</answer>"]) == [1.0, 0.0]
    with pytest.raises(AlignlabError, match="regular expression"):
        get_reward("format", pattern="(")


def test_callable_named_module_colon_function(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def length(prompts, completions, scale=1.0, **kw):\n"
                 "    return [scale * len(c) for c in completions]\n")
    fn = get_reward(f"{f}:length", scale=0.5)
    assert fn(["a", "b"], ["abcd", ""]) == [2.0, 0.0]
    assert get_reward("math:fsum") is not None  # an importable module path resolves
    with pytest.raises(AlignlabError, match="cannot import module 'no_such_mod_xyz'"):
        get_reward("no_such_mod_xyz:fn")
    with pytest.raises(AlignlabError, match="has no attribute 'nope'"):
        get_reward("math:nope")
    with pytest.raises(AlignlabError, match="unknown reward"):
        get_reward("sentimental")
    with pytest.raises(AlignlabError, match="does not exist"):
        get_reward(f"{tmp_path}/missing.py:fn")


def test_rewards_are_called_as_trl_calls_them():
    # TRL passes prompts= and completions= as keywords: its documented `reward_len(completions, **kwargs)` raised
    # "takes 1 positional argument but 2 were given"; functions naming them otherwise still get them by position
    def reward_len(completions, **kwargs):
        return [-abs(20 - len(c)) for c in completions]

    assert score(reward_len, ["p"], ["abcde"]) == [-15.0]
    assert score(lambda ps, cs, **kw: [len(ps[0]) + len(cs[0])], ["ab"], ["cde"]) == [5.0]


def test_reward_options_are_checked_and_reach_a_trl_style_function(tmp_path):
    # a misspelt option ended in a raw TypeError traceback (exit 1)
    with pytest.raises(AlignlabError, match="reward format: unknown option 'patern' \\(its options: pattern, full_match"):
        get_reward("format", patern="x")
    with pytest.raises(AlignlabError, match="unknown option 'patern'"):
        get_reward(["math", "format"], format={"patern": "x"})
    f = tmp_path / "trl_style.py"
    f.write_text("def reward_len(completions, target=20, **kwargs):\n"
                 "    return [-abs(target - len(c)) for c in completions]\n")
    assert score(get_reward(f"{f}:reward_len", target=3), ["p"], ["abcde"]) == [-2.0]


def test_score_checks_length_and_finiteness():
    with pytest.raises(AlignlabError, match="returned 1 values for 2"):
        score(lambda p, c, **k: [1.0], ["a", "b"], ["x", "y"])
    with pytest.raises(AlignlabError, match="non-finite"):
        score(lambda p, c, **k: [float("nan")], ["a"], ["x"])


@pytest.mark.parametrize("spans", [False, True])
def test_reward_model_scores_the_sequence_rm_training_scored(spans):
    """Each (prompt, completion) is scored as `alignlab rm` trained on it (data/ranked.py tokenize_example: plain text
    + EOS, or the chat template's sequence without its trailing newline), at its last token, as when run alone;
    consecutive completions of one prompt are one group (with span attention: the prompt once), same scores."""
    from test_rollout_tiny import char_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignlab.models.attention import enable_span_attention

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = LlamaForSequenceClassification(cfg).eval()
    if spans:
        assert enable_span_attention(model)
    fn = get_reward("reward_model", model=model, tokenizer=tok, batch_size=3)
    chat = [{"role": "user", "content": "hi"}]
    prompts = ["Hello ", "Hello ", chat, chat, "A much longer prompt here "]
    comps = ["world", "there", "yo", "hey", "ok"]
    got = fn(prompts, comps)
    eos = tok.eos_token_id
    wanted = [tok(t, add_special_tokens=False).input_ids + [eos] for t in ("Hello world", "Hello there")]
    wanted += [tok(tok.apply_chat_template(chat + [{"role": "assistant", "content": c}], tokenize=False).rstrip("\n"),
                   add_special_tokens=False).input_ids for c in ("yo", "hey")]
    wanted += [tok("A much longer prompt here ok", add_special_tokens=False).input_ids + [eos]]
    for g, ids in zip(got, wanted, strict=True):
        with torch.no_grad():
            assert g == pytest.approx(model(torch.tensor([ids])).logits[0, 0].item(), abs=1e-5)


def test_reward_model_reward_loads_on_the_device_asked_for(tmp_path):
    # eval's reward_accuracy loaded its scorer on the CPU whatever `device` said (and scored 16 a forward)
    import torch

    from alignlab.errors import AlignlabError
    from alignlab.models.heads import load_scorer
    from alignlab.models.load import load_tokenizer
    from alignlab.rollout.rewards import reward_model_reward

    if torch.cuda.is_available():
        pytest.skip("the refusal below needs a machine without CUDA")
    load_scorer("tiny-random").save_pretrained(tmp_path)  # a reward model: a trained (here: saved) head
    load_tokenizer("tiny-random").save_pretrained(tmp_path)
    with pytest.raises(AlignlabError, match="CUDA"):
        reward_model_reward(path=str(tmp_path), device="cuda")
    assert reward_model_reward(path=str(tmp_path), device="cpu", batch_size=4).batch_size == 4
