"""Two CPU processes (gloo) under torchrun train like one process with the same global batch.

Rank r takes its slice of each micro-batch, DDP averages gradients (the loop scales each rank's loss
by world size x its share of the step's trained tokens), rank 0 alone writes metrics and checkpoints.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignlab.data.collate import Collator
from alignlab.train import train
from alignlab.train.checkpoint import list_checkpoints
from alignlab.train.metrics import read_metrics
from alignlab.train.steps import causal_lm_step

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_train_loop import cfg_for, counting_data, tiny_llama  # noqa: E402

SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train_loop import tiny_llama, counting_data, cfg_for
    from alignlab.data.collate import Collator
    from alignlab.train import train, World
    from alignlab.train.steps import causal_lm_step
    torch.set_num_threads(1)
    world = World.from_env("cpu")
    model = tiny_llama()
    train(cfg_for(sys.argv[1], max_steps=6, save_steps=3, batch_size=8, grad_accum=2), model, causal_lm_step,
          counting_data(), Collator(0, packing=True), world=world)
""")


@pytest.mark.slow  # two torchrun processes: ~15 s on an idle 2-core box, over a minute on a shared one
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(tests=str(HERE)))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "ddp")],
                   check=True, timeout=300, capture_output=True)
    single = tiny_llama()
    train(cfg_for(tmp_path / "one", max_steps=6, save_steps=3, batch_size=8, grad_accum=2), single,
          causal_lm_step, counting_data(), Collator(0, packing=True))
    ddp_rows = [r for r in read_metrics(tmp_path / "ddp") if "loss" in r]
    one_rows = [r for r in read_metrics(tmp_path / "one") if "loss" in r]
    assert [r["step"] for r in ddp_rows] == list(range(1, 7))  # one writer: rank 0
    for a, b in zip(ddp_rows, one_rows):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5
        assert a["num_tokens"] == b["num_tokens"]  # token counts are summed over ranks
    assert [s for s, _ in list_checkpoints(tmp_path / "ddp")] == [3, 6]
    from transformers import LlamaForCausalLM

    ddp_model = LlamaForCausalLM.from_pretrained(tmp_path / "ddp")
    for (k, a), b in zip(single.state_dict().items(), ddp_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=0, msg=k)
