"""The frontier experiment's arithmetic (eval/frontier.py, recipes/frontier.py): envelopes, the 'highest frontier' verdict, and
the config checks. Values worked out by hand in each docstring."""

import math

import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.frontier import envelope, frontier_summary
from alignlab.recipes.frontier import FrontierConfig, run_key


def _p(kl, reward):
    return {"kl": kl, "reward": reward}


def test_envelope_keeps_only_points_that_raise_the_best_reward_so_far():
    """Sorted by KL: (0, .1) starts; (.5, .05) is below .1: dropped; (1, .3) rises; (2, .2) dropped;
    (3, .4) rises. Equal KL: the higher reward comes first, so (1, .25) is dropped."""
    pts = [_p(2, 0.2), _p(0, 0.1), _p(1, 0.25), _p(0.5, 0.05), _p(1, 0.3), _p(3, 0.4)]
    assert envelope(pts) == [(0, 0.1), (1, 0.3), (3, 0.4)]


def test_summary_compares_methods_on_the_common_kl_range():
    """Method a reaches KL 2, b only 1, so the common range is [0, 1] (50 grid points 0, 1/49, ..., 1).
    a: .0 below KL 1, .5 at KL 1 -> mean (49 * 0 + .5) / 50 = .01; b: .2 everywhere -> .2. b is highest
    although a's best reward (1.0 at KL 2) is higher: beyond b's range nothing is compared."""
    runs = {"a 1": {"method": "a", "points": [_p(0, 0.0), _p(1, 0.5), _p(2, 1.0)]},
            "b 1": {"method": "b", "points": [_p(0, 0.2), _p(1, 0.1)]}}
    s = frontier_summary(runs)
    assert s["common_kl_range"] == [0.0, 1]
    assert s["mean_reward_on_common_kl"]["a"] == pytest.approx(0.01)
    assert s["mean_reward_on_common_kl"]["b"] == pytest.approx(0.2)
    assert s["highest"] == "b"
    assert s["best"] == {"a": {"reward": 1.0, "kl": 2}, "b": {"reward": 0.2, "kl": 0}}


def test_below_its_first_point_a_method_is_credited_the_base_models_reward():
    """Best-of-N has no KL-0 point (N=2 is at 0.19). The base model's reward (the KL-0 points: 0.1) is what it
    reached within a smaller budget, not its first point's 0.6. Grid [0, 1]: bon 0.1 below 0.5 (25 points),
    0.6 from there (25) -> 0.35; a: 0.1 until KL 1 (49 points), 0.5 at 1 -> 0.108. Without any KL-0 point the
    range starts where every method has one (0.5)."""
    runs = {"a": {"method": "a", "points": [_p(0, 0.1), _p(1, 0.5)]},
            "bon": {"method": "best_of_n", "points": [_p(0.5, 0.6), _p(2, 0.9)]}}
    s = frontier_summary(runs)
    assert s["mean_reward_on_common_kl"]["best_of_n"] == pytest.approx((25 * 0.1 + 25 * 0.6) / 50)
    assert s["mean_reward_on_common_kl"]["a"] == pytest.approx((49 * 0.1 + 0.5) / 50)
    no_base = frontier_summary({"a": {"method": "a", "points": [_p(0.2, 0.1), _p(1, 0.5)]}, "bon": runs["bon"]})
    assert no_base["common_kl_range"] == [0.5, 1]


def test_a_first_point_below_the_base_model_does_not_lower_a_method_below_it():
    """Best-of-2 can score below the base model (0.45 against 0.5); the base stays within any budget, so its
    height is 0.5 until its 0.6 at KL 0.8 (grid [0, 1]: 40 points below 0.8 at 0.5, 10 at 0.6 -> 0.52), not
    0.45 from KL 0.2 on (which made dpo, 0.5004, the highest)."""
    runs = {"dpo": {"method": "dpo", "points": [_p(0, 0.5), _p(1, 0.502)]},
            "bon": {"method": "best_of_n", "points": [_p(0.2, 0.45), _p(0.8, 0.6), _p(1.0, 0.6)]}}
    s = frontier_summary(runs)
    grid = [i / 49 for i in range(50)]
    assert s["mean_reward_on_common_kl"]["best_of_n"] == pytest.approx(sum(0.6 if g >= 0.8 else 0.5 for g in grid) / 50)
    assert s["highest"] == "best_of_n"


def test_summary_says_tie_when_envelopes_are_equal():
    runs = {"a 1": {"method": "a", "points": [_p(0, 0.0)]}, "b 1": {"method": "b", "points": [_p(0, 0.0)]}}
    assert frontier_summary(runs)["highest"] == "tie: a, b"


def test_best_of_n_kl_formula_values():
    """log N - (N - 1) / N: N=1 -> 0, N=2 -> log 2 - 1/2 = 0.1931, N=16 -> log 16 - 15/16 = 1.8351."""
    assert [round(math.log(n) - (n - 1) / n, 4) for n in (1, 2, 16)] == [0.0, 0.1931, 1.8351]


def test_run_keys_and_config_checks():
    assert run_key("dpo", 0.1) == "dpo 0.1" and run_key("best_of_n", 4.0) == "best_of_n 4"
    with pytest.raises(AlignlabError, match="unknown methods"):
        FrontierConfig(sweep={"dop": [0.1]}).validate()
    with pytest.raises(AlignlabError, match="712"):
        FrontierConfig(train_prompts=700, eval_prompts=32).validate()
    for ns in ([2.5], [0]):  # 2.5 ran as N=2 under a key no rerun found; 0 failed after the models loaded
        with pytest.raises(AlignlabError, match="best_of_n: N must be whole numbers >= 1"):
            FrontierConfig(sweep={"best_of_n": ns}).validate()
    FrontierConfig(sweep={"best_of_n": [2.0, 4]}).validate()
    FrontierConfig().validate()
    for sweep in ({}, {"best_of_n": []}):  # a KeyError traceback at the summary, after the runs
        with pytest.raises(AlignlabError, match="sweep: give each method one value or more"):
            FrontierConfig(sweep=sweep).validate()


def test_stale_runs_by_the_settings_each_method_depends_on():
    """A changed rl_learning_rate makes the PPO and GRPO runs stale (not DPO's, not best-of-N's); num_generations
    only GRPO's; a run's own stored settings win over the file's config; a shared key refuses the file."""
    from dataclasses import asdict

    from alignlab.eval.frontier import run_settings, stale_runs

    old = asdict(FrontierConfig())
    data = {"config": old, "runs": {f"{m} 0.1": {"method": m} for m in ("dpo", "ppo", "grpo", "best_of_n")}}
    assert stale_runs(data, old, "p.json") == {}
    new = {**old, "rl_learning_rate": 2e-3, "cpu_threads": 2, "sweep": {"ppo": [0.0]}, "output_dir": "x"}
    assert stale_runs(data, new, "p.json") == {"ppo 0.1": {"rl_learning_rate": (1e-3, 2e-3)},
                                               "grpo 0.1": {"rl_learning_rate": (1e-3, 2e-3)}}
    assert list(stale_runs(data, {**old, "num_generations": 8}, "p.json")) == ["grpo 0.1"]
    data["runs"]["ppo 0.1"]["settings"] = run_settings(new, "ppo")  # redone under the new settings
    assert list(stale_runs(data, new, "p.json")) == ["grpo 0.1"]
    with pytest.raises(AlignlabError, match=r"p.json: .*max_new_tokens 24 -> 48.*new output_dir"):
        stale_runs(data, {**new, "max_new_tokens": 48}, "p.json")


def test_preference_pairs_are_reused_only_under_the_settings_they_were_sampled_with(tmp_path):
    """preferences.jsonl is sampled once; a rerun reuses it when preferences.settings.json holds this config's
    shared settings (no sampling: ctx holds no model), refuses other settings (a first attempt with 16 prompts,
    a rerun with 200), and trusts an older file without settings when points.json had runs its guard checked."""
    import json

    from alignlab.errors import AlignlabError
    from alignlab.eval.frontier import SHARED_KEYS, preference_pairs

    cfg = FrontierConfig(output_dir=str(tmp_path))
    config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    (tmp_path / "preferences.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "preferences.settings.json").write_text(json.dumps({k: config[k] for k in SHARED_KEYS}))
    assert preference_pairs(cfg, config, tmp_path, {}, False) == tmp_path / "preferences.jsonl"
    with pytest.raises(AlignlabError, match="train_prompts"):
        preference_pairs(cfg, {**config, "train_prompts": config["train_prompts"] + 1}, tmp_path, {}, False)
    (tmp_path / "preferences.settings.json").unlink()
    assert preference_pairs(cfg, config, tmp_path, {}, True) == tmp_path / "preferences.jsonl"
    assert json.loads((tmp_path / "preferences.settings.json").read_text())["seed"] == cfg.seed
