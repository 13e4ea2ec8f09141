"""`alignlab passk` end to end on tiny-random and three real GSM8K problems (the JSON line and file)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_passk_cli_on_gsm8k(tmp_path, data_dir):
    src = data_dir / "gsm8k" / "test.jsonl"
    if not src.is_file():
        pytest.skip(f"GSM8K test split not found at {src}")
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(src.read_text().splitlines()[:3]) + "\n")
    out = tmp_path / "passk.json"
    cmd = [sys.executable, "-m", "alignlab", "passk", "model=tiny-random", f"data={data}", "n=4", "k=[1,4]",
           "max_new_tokens=8", "device=cpu", f"output={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                         "PYTHONPATH": "src", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                         "HOME": str(Path.home())})
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["problems"] == 3 and result["n"] == 4
    assert 0.0 <= result["pass@1"] <= result["pass@4"] <= 1.0 and "maj@4" in result
    bad = subprocess.run(cmd[:4] + ["data=missing.jsonl"], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": "src", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr
