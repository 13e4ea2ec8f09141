"""Losses: pure tensor functions, and the registry that says what each one needs.

Preference losses: alignlab.losses.preference (paired) and .unpaired (kto); reward-model losses:
.reward; SFT: .sft; online RL: .policy and .advantages. Look losses up by name through
`get_loss_spec` / `combine`, never by comparing strings.
"""

from alignlab.losses.registry import (
    LOSSES,
    LossMix,
    LossOutput,
    LossSpec,
    PairLogps,
    RunningMean,
    combine,
    get_loss_spec,
)

__all__ = [
    "LOSSES",
    "LossMix",
    "LossOutput",
    "LossSpec",
    "PairLogps",
    "RunningMean",
    "combine",
    "get_loss_spec",
]
