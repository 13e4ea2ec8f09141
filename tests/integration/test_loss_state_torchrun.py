"""Issue 15 item 9 under a real launcher: losses with batch statistics train on 2 ranks as on 1.

bco_pair (running reward mean) and kto (reference point z0) through `torchrun --nproc_per_node 2`, against one
process with the same global batch: the logged loss curves and the final weights agree, because both
statistics are computed over every rank's micro-batch (train.preference.gather_ranks). Before, each rank kept
its own statistic and the curves drifted apart.
"""

import pytest
from test_distributed_torchrun import (
    COMMON,
    assert_close_weights,
    curve,
    final_weights,
    preference_file,
    torchrun,
)

from alignlab.cli import main


@pytest.mark.slow  # ~20 s each (two launches); test_loss_state.py checks the same statistics in-process, fast
@pytest.mark.parametrize("loss", ["bco_pair", "kto"])
def test_two_ranks_match_one_rank(tmp_path, loss):
    data = preference_file(tmp_path / "pref.jsonl")
    # a held-out split: KTO's eval means are per evaluation batch, which was the world's micro-batch (4 rows on one
    # process, 2 per rank on two), so eval_logps/chosen moved with the number of ranks
    args = ["dpo", f"data={data}", "max_steps=4", "batch_size=4", f"loss=[{loss}]", "learning_rate=2e-2",
            "eval_split=0.25", "eval_steps=2", *[c for c in COMMON if not c.startswith(("learning_rate", "eval_split"))]]
    one = tmp_path / "one"
    assert main([*args, f"output_dir={one}"]) == 0
    two = tmp_path / "two"
    run = torchrun(tmp_path, [*args, f"output_dir={two}"])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    a, b = curve(one), curve(two)
    assert [b[s] for s in range(1, 5)] == pytest.approx([a[s] for s in range(1, 5)], abs=1e-5)
    assert abs(a[4] - a[1]) > 1e-3, "the curve must move for the comparison to mean anything"
    assert_close_weights(final_weights(one), final_weights(two), atol=1e-5)
    for key in ("eval_loss", "eval_logps/chosen", "eval_rewards/rejected"):
        ea, eb = curve(one, key), curve(two, key)
        assert list(ea) == [0, 2, 4] and [eb[s] for s in ea] == pytest.approx(list(ea.values()), abs=1e-5)
