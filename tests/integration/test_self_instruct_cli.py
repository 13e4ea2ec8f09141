"""`alignlab self-instruct` on tiny-random end to end: the Alpaca JSON it writes is what `alignlab sft` trains on."""

import json

from alignlab.cli import main


def test_self_instruct_then_sft(tmp_path, capsys):
    out = tmp_path / "si.json"
    code = main(["self-instruct", "model=tiny-random", f"output={out}", "num_tasks=3", "max_requests=16", "batch=8",
                 "max_new_tokens=16", "device=cpu", "seed=1"])
    assert code == 0
    records = json.loads(out.read_text())
    assert 1 <= len(records) <= 3 and all(set(r) == {"instruction", "input", "output"} for r in records)
    counts = json.loads((tmp_path / "si.json.counts.json").read_text())
    assert counts["written"] == len(records) and counts["seed_tasks"] == 24
    assert counts["generated"] == counts["kept_instructions"] + sum(
        v for k, v in counts.items() if k.startswith("dropped_") and not k.startswith("dropped_instance_"))
    assert "self-instruct stages:" in capsys.readouterr().out
    code = main(["sft", "model=tiny-random", f"data={out}", f"output_dir={tmp_path / 'sft'}", "max_steps=1",
                 "batch_size=1", "eval_split=0", "cpu_threads=1", "progress=none", "device=cpu"])
    assert code == 0 and (tmp_path / "sft" / "model.safetensors").exists()
