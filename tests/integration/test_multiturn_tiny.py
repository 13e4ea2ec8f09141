"""run_episodes with the real sampler (rollout.generate) and tiny-random: samples plug in as they are."""

import pytest


@pytest.mark.slow
def test_run_episodes_with_generate_on_tiny_random():
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rl.envs import get_env, run_episodes
    from alignlab.rollout.generate import SamplingConfig, generate

    model, tok = load_model("tiny-random", device="cpu"), load_tokenizer("tiny-random")
    cfg = SamplingConfig(max_new_tokens=8, logprobs=True, seed=1)
    rows = [{"question": "What is 6 * 7?", "answer": "42"}, {"question": "What is 2 + 2?", "answer": "4"}]
    eps = run_episodes(lambda: get_env("calculator"), rows, tok,
                       lambda contexts, ids: generate(model, tok, contexts, cfg).samples, max_response_tokens=64)
    for ep in eps:
        assert ep.done or ep.truncated
        assert len(ep.response_ids) == len(ep.loss_mask) == len(ep.logprobs) > 0
        assert ep.segments[0].generated and all(lp <= 0.0 for lp in ep.logprobs)


def test_play_ends_each_turn_at_the_envs_stop_string(monkeypatch):
    """rl.multiturn.play samples every turn with the environment's `stop` strings (tool envs: the call's closing
    tag): with a stop string tiny-random writes often ("e"), every sampled turn either ends at its first "e" (the
    turn's text without its last token has none) or ran out of tokens, and it does stop early at least once."""
    import contextlib
    from types import SimpleNamespace

    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.rl.envs import base
    from alignlab.rl.envs.calculator import CalculatorEnv
    from alignlab.rl.multiturn import play

    class StopAtE(CalculatorEnv):
        stop = ("e",)

    monkeypatch.setitem(base.ENVS, "stop_at_e", StopAtE)
    assert base.get_env("calculator").stop == ("</tool_call>",)
    cfg = SimpleNamespace(env="stop_at_e", max_turns=2, reward="math", env_options={}, max_new_tokens=12,
                          generation_batch_size=8, sampling_weights="model", max_prompt_length=None)
    tok = load_tokenizer("tiny-random")
    from alignlab.rollout.rewards import get_reward

    state = SimpleNamespace(cfg=cfg, policy=load_model("tiny-random", device="cpu"), tokenizer=tok,
                            reward_fn=get_reward("math"),
                            compute=lambda cache: contextlib.nullcontext())
    rows = [SimpleNamespace(chat=True, prompt=[{"role": "user", "content": f"What is {i} + 1?"}], answer=str(i + 1))
            for i in range(4)]
    episodes = play(state, rows, 2, lambda turn: dict(seed=turn, per_row_seed=True))
    turns = [seg.ids for ep in episodes for seg in ep.segments if seg.generated]
    stopped = 0
    for ids in turns:
        text, head = tok.decode(ids), tok.decode(ids[:-1])
        assert "e" not in head and ("e" in text or len(ids) == cfg.max_new_tokens), text
        stopped += "e" in text and len(ids) < cfg.max_new_tokens
    assert stopped > 0
