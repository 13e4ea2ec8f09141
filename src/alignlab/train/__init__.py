"""One training loop for every recipe: `train(cfg, model, step_fn, dataset, collate, eval_fn=...)`.

Heavy imports (torch) happen inside the functions, so importing this package is cheap.
"""

from alignlab.train.config import TrainConfig
from alignlab.train.loop import TrainingDiverged, TrainResult, evaluate, seed_everything, train
from alignlab.train.optim import build_optimizer, lr_at
from alignlab.train.world import World

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "World",
    "build_optimizer",
    "evaluate",
    "lr_at",
    "seed_everything",
    "train",
]
