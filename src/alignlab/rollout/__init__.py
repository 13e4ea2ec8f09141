"""Rollouts: batched sampling with our own KV-cache loop (generate.py: the API; engine.py: continuous
batching; kvcache.py: the reserved cache; weights.py: bf16 sampling weights; constrained.py: grammar
masks), an external OpenAI-compatible engine (remote.py), reward functions (rewards.py), best-of-N /
rejection sampling into trainable datasets (sampling.py) and their CLI commands (commands.py).

Import the submodules directly; importing this package does no work.
"""
