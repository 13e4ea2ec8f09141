"""Who am I in the job: rank, world size, device, and the few collectives the loop needs.

One process is a world of size 1 and every method is a no-op, so the loop reads the same with or
without torch.distributed. Under `torchrun` / `accelerate launch` (env RANK, WORLD_SIZE, LOCAL_RANK)
`World.from_env()` joins the process group, and the loop wraps the model in DDP, takes its rank's
share of every batch, syncs gradients only on the last micro-step (`no_sync`) and lets rank 0 alone
write logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and the final model."""
        return self.rank == 0

    @staticmethod
    def resolve_device(device: str) -> str:
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    @classmethod
    def from_env(cls, device: str = "auto") -> World:
        """Single process unless launched with torchrun / accelerate (WORLD_SIZE > 1)."""
        import torch
        import torch.distributed as dist

        size = int(os.environ.get("WORLD_SIZE", "1"))
        device = cls.resolve_device(device)
        if size == 1:
            return cls(device=device)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(rank=rank, size=size, local_rank=local, device=device)

    @classmethod
    def for_run(cls, cfg: Any) -> World:
        """from_env(cfg.device), the run's batch checked against the world size before anything loads (it failed
        after the models loaded and the reference pass ran)."""
        world = cls.from_env(cfg.device)
        cfg.micro_batch_size(world.size)  # offline: rows per rank and micro-step; online RL: prompts per rank
        return world

    def wrap(self, model: Any) -> Any:
        """DistributedDataParallel when the world has several ranks; the model itself otherwise."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    @staticmethod
    def unwrap(model: Any) -> Any:
        """The user's model inside a DDP (or other `.module`-style) wrapper."""
        return getattr(model, "module", model)

    def no_sync(self, model: Any, skip_sync: bool):
        """Skip the gradient all-reduce on micro-steps before the last one (DDP); no-op otherwise."""
        if skip_sync and self.size > 1 and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def all_reduce_sum(self, value: float) -> float:
        """Sum a Python number over ranks (e.g. token counts that weigh the loss)."""
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable Python objects: samples, rewards)."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def all_gather_cat(self, tensor: Any) -> Any:
        """Concatenate every rank's tensor along dim 0, in rank order (same shape on every rank)."""
        if self.size == 1:
            return tensor
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)
