"""Online RL on the shared training parts: rollout (sample, score, old/reference log-probs, values) ->
advantages (losses/advantages.py registry) -> policy and critic updates on train/step.py's optimizer-step
core -> checkpoints with exact resume (rl/loop.py). Recipes (`alignlab grpo|ppo|online-dpo`) only wire these.

Heavy imports (torch) happen inside the modules' functions, so importing this package is cheap.
"""
