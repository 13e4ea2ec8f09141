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
                       lambda contexts: generate(model, tok, contexts, cfg).samples, max_response_tokens=64)
    for ep in eps:
        assert ep.done or ep.truncated
        assert len(ep.response_ids) == len(ep.loss_mask) == len(ep.logprobs) > 0
        assert ep.segments[0].generated and all(lp <= 0.0 for lp in ep.logprobs)
