"""What the peer benchmarks share: TRL in its own virtual environment, and one worker process per side.

Each side runs in its own process so its peak RSS is its own; TRL never becomes a dependency of alignlab.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_trl_venv(venv: Path) -> Path:
    """A venv holding TRL with the same torch release as ours (created once, reused after)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(f"creating {venv} with torch=={torch_version} and trl (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", "trl"], check=True)
    return python


def run_worker(script: Path, python: str, side: str, spec: dict, spec_path: Path) -> dict:
    """Run `script --worker SIDE --spec FILE` under `python`; its last stdout line is the JSON result."""
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    if side == "trl":
        env.pop("PYTHONPATH")  # the TRL side must not see alignlab
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    proc = subprocess.run([python, str(script), "--worker", side, "--spec", str(spec_path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])
