"""Issue 15 item 9: loss state that changes later steps is exact across a resume and across ranks.

BCO's running reward mean is saved in the checkpoint (a bco_pair run resumed at step 2 ends at the same
weights as an uninterrupted one; it used to restart the mean at 0), and BCO's mean and KTO's reference point
z0 are computed over every rank's micro-batch, so 2 ranks with half the batch each equal 1 rank.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from alignlab.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["progress=none", "cpu_threads=1", "max_length=96", "logging_steps=1", "eval_split=0", "save_steps=2",
        "loss=[bco_pair]", "learning_rate=1e-2"]


def dpo(data_dir, out, *extra):
    data = data_dir / "llamafactory_demo" / "dpo_en_demo.json"
    return main(["dpo", "--config", str(CONFIGS / "dpo_tiny.yaml"), f"data={data}", f"output_dir={out}", *FAST, *extra])


def test_bco_resume_equals_uninterrupted_run(data_dir, tmp_path):
    assert dpo(data_dir, tmp_path / "full", "max_steps=4") == 0
    assert dpo(data_dir, tmp_path / "cut", "max_steps=2") == 0
    state = (tmp_path / "cut" / "checkpoint-2" / "trainer_state.json").read_text()
    assert "bco_reward_mean" in state
    assert dpo(data_dir, tmp_path / "cut", "max_steps=4") == 0  # resumes from checkpoint-2
    full, cut = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    for name, value in full.items():
        assert torch.equal(cut[name], value), name


def _pairs(n: int):
    g = torch.Generator().manual_seed(3)

    def ids(k):
        return torch.randint(1, 60, (k,), generator=g).tolist()

    return [{"prompt_ids": ids(4 + i % 3), "chosen_ids": ids(3 + i % 2), "rejected_ids": ids(2 + i % 4)}
            for i in range(n)]


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))


NOISE_SEED = 1  # a perturbation whose mismatched-pair KL is positive (z0 is clamped at 0)


def _stats(pairs, rank: int, world: int, noise_seed: int = NOISE_SEED) -> dict[str, float]:
    """BCO's updated running mean and KTO's z0 for this rank's share of `pairs`."""
    from alignlab.data.pairs import PairCollator, unpaired_as_pairs
    from alignlab.losses import combine
    from alignlab.train.preference import ModelReference, PreferenceStep, UnpairedStep

    policy, ref = _tiny(), _tiny()
    with torch.no_grad():  # a policy that differs from its reference: nonzero rewards and z0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + noise_seed)))
    share = len(pairs) // world
    mine = pairs[rank * share:(rank + 1) * share]
    collate = PairCollator(0, "plain")
    bco = PreferenceStep(combine("bco_pair"), ModelReference(ref), beta=0.1)
    bco(policy, collate(mine))
    from types import SimpleNamespace

    unpaired = [SimpleNamespace(prompt_ids=p["prompt_ids"], completion_ids=p["chosen_ids"], label=i % 2 == 0)
                for i, p in enumerate(pairs)]
    kto_rows = unpaired_as_pairs(unpaired, len(pairs))[rank * share:(rank + 1) * share]
    _, metrics = UnpairedStep(combine("kto"), ModelReference(ref), beta=0.1)(policy, collate(kto_rows))
    return {"bco_mean": bco.reward_mean.mean, "kto_z0": float(metrics["kl"])}


def _worker(rank: int, port: int, pairs, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out[rank] = _stats(pairs, rank, 2)
    dist.destroy_process_group()


def test_bco_mean_and_kto_z0_are_the_same_on_two_ranks_as_on_one():
    pairs = _pairs(4)
    one = _stats(pairs, 0, 1)
    assert one["bco_mean"] != 0 and one["kto_z0"] > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(port, pairs, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank]["bco_mean"] == pytest.approx(one["bco_mean"], abs=1e-6)
        assert out[rank]["kto_z0"] == pytest.approx(one["kto_z0"], abs=1e-6)


def _nll_grads(pairs, loss: list[str], rank: int, world: int) -> list[float]:
    """This rank's gradient (first 8 entries of each parameter) of `loss` on its share of `pairs`."""
    from alignlab.data.pairs import PairCollator
    from alignlab.losses import combine
    from alignlab.train.preference import ModelReference, PreferenceStep

    policy, ref = _tiny(), _tiny()
    share = len(pairs) // world
    step = PreferenceStep(combine(loss), ModelReference(ref), beta=0.1)
    out, _ = step(policy, PairCollator(0, "plain")(pairs[rank * share:(rank + 1) * share]))
    out.backward()
    return torch.cat([p.grad.flatten()[:8] for p in policy.parameters()]).tolist()


def _nll_worker(rank: int, port: int, pairs, loss, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out[rank] = _nll_grads(pairs, loss, rank, 2)
    dist.destroy_process_group()


@pytest.mark.parametrize("loss", [["orpo"], ["dpo", "sft"]])
def test_nll_term_is_the_global_token_mean_on_two_ranks(loss):
    """ORPO's and RPO's NLL is the token mean over every rank's chosen tokens: the two ranks' gradients,
    averaged as DDP averages them, equal one rank's on the whole micro-batch. The ranks' chosen answers have
    different lengths (10 and 11 tokens), where a per-rank token mean made the gradients differ."""
    pairs = _pairs(6)
    assert sum(len(p["chosen_ids"]) for p in pairs[:3]) != sum(len(p["chosen_ids"]) for p in pairs[3:])
    one = _nll_grads(pairs, loss, 0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_nll_worker, args=(port, pairs, loss, out), nprocs=2, join=True)
    both = [(a + b) / 2 for a, b in zip(out[0], out[1])]
    assert max(abs(x) for x in one) > 1e-3
    assert both == pytest.approx(one, abs=1e-6)


def _gather_worker(rank: int, port: int, out):
    import torch.distributed as dist

    from alignlab.train.preference import gather_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    out[rank] = gather_ranks(torch.arange(3.0) if rank == 0 else torch.tensor([10.0, 11.0])).tolist()
    dist.destroy_process_group()


def test_gather_ranks_takes_unequal_shares():
    # online DPO splits a step's pairs as they come (3 and 2): all_gather of unequal sizes failed in gloo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(port, out), nprocs=2, join=True)
    assert out[0] == out[1] == [0.0, 1.0, 2.0, 10.0, 11.0]


def test_an_online_dpo_filler_micro_batch_leaves_bcos_running_mean_alone():
    """A step with fewer pairs than grad_accum slots runs a copy of a pair at weight 0 in each empty slot: its
    rewards went into BCO's running mean (toward the copied pair) and counted as a batch (count 8 for 4 real)."""
    from alignlab.data.pairs import PairCollator
    from alignlab.losses import combine
    from alignlab.train.preference import ModelReference, PreferenceStep

    policy, ref = _tiny(), _tiny()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pairs, collate = _pairs(2), PairCollator(0, "plain")
    step = PreferenceStep(combine("bco_pair"), ModelReference(ref), beta=0.1)
    step(policy, collate(pairs[:1]))
    after_real = step.reward_mean
    step(policy, {**collate(pairs[1:]), "filler": True})
    assert step.reward_mean == after_real and after_real.count == 1
