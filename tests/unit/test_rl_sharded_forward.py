"""rl/rollout.py sharded_forward on two real gloo processes: every row of any rollout size, in order."""

import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, sizes: list, out: str) -> None:
    import torch.distributed as dist

    from alignlab.rl.rollout import sharded_forward
    from alignlab.train.world import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2, local_rank=rank, device="cpu")
        # each row's "forward" is its index and the square of it, [rows, 2]; chunks of 2 rows
        got = [sharded_forward(lambda i: torch.stack([i, i * i], -1).float(), n, 2, world) for n in sizes]
        torch.save(got, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_row_comes_back_in_order_whatever_the_rollout_size(tmp_path):
    """9 rows (3 kept groups of 3 under dynamic sampling) on 2 ranks: 5 + 4; 1 row: 1 + 0 (the second rank
    runs filler only). Every rank gets rows 0..n-1 in order, no row lost and none twice."""
    sizes, out = [8, 9, 1, 3], str(tmp_path / "res")
    mp.spawn(_worker, args=(_free_port(), sizes, out), nprocs=2)
    for rank in (0, 1):
        for n, got in zip(sizes, torch.load(f"{out}.{rank}")):
            rows = torch.arange(n).float()
            assert torch.equal(got, torch.stack([rows, rows * rows], -1)), (rank, n)
