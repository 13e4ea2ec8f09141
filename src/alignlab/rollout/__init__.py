"""Rollouts: batched sampling with our own KV-cache loop (generate.py), reward functions (rewards.py),
best-of-N / rejection sampling into trainable datasets (sampling.py) and their CLI commands (commands.py).

Import the submodules directly; importing this package does no work.
"""
