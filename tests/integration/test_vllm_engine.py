"""GRPO with a real vLLM server as the rollout engine (issue 14): SmolLM2 with a LoRA policy on a vLLM CPU server
started here. vLLM pins its own torch and transformers, so it lives in its own virtual environment; name its
Python in ALIGNLAB_VLLM_PYTHON (set-up in docs/serving.md, "vLLM as the rollout engine"). Skipped otherwise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from alignlab.cli import main
from alignlab.train.metrics import read_metrics

VLLM_PYTHON = os.environ.get("ALIGNLAB_VLLM_PYTHON")
TOPICS = ("the sea", "a city at night", "autumn", "a train ride", "coffee", "mountains", "a library", "rain")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON, reason="ALIGNLAB_VLLM_PYTHON (the Python of a venv with vLLM) is not set")
def test_grpo_samples_on_a_vllm_server_and_pushes_the_adapter(tmp_path):
    """Three GRPO steps sampled by vLLM (bf16) with the LoRA adapter pushed after each: every step's sampler/trainer
    mismatch (rollout_kl_k3) stays at bf16 rounding size while the policy moves away from the reference, and the
    server ends up serving the last push."""
    from alignlab.models.load import resolve_model

    port, name = _free_port(), "policy"
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    log = open(tmp_path / "vllm.log", "w")
    server = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model("smollm2-135m-instruct"),
         "--served-model-name", "base", "--dtype", "bfloat16", "--max-model-len", "512", "--enable-lora",
         "--max-lora-rank", "16", "--port", str(port), "--seed", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                _models(url)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "vllm.log").read_text()[-3000:]
                time.sleep(2)
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Write one sentence about {t}."}]})
                                + "\n" for t in TOPICS))
        out = tmp_path / "run"
        assert main(["grpo", "model=smollm2-135m-instruct", "lora={r: 16, alpha: 32, dropout: 0.0}", f"data={data}",
                     "reward=sentiment", "eval_prompts=0", "batch_size=2", "num_generations=4", "max_new_tokens=16",
                     "temperature=1.0", "rollout_is=tis", "max_steps=3", "learning_rate=1e-3", "save_steps=0",
                     "cpu_threads=1", f"output_dir={out}",
                     f"rollout_engine={{url: '{url}', model: {name}, server: vllm}}"]) == 0
        rows = [r for r in read_metrics(out) if "reward_mean" in r]
        assert len(rows) == 3
        assert all(0 <= r["rollout_kl_k3"] < 0.01 and r["rollout_is_capped_frac"] < 0.05 for r in rows), rows
        assert rows[-1]["kl_k3"] > 0  # the pushed adapters moved the policy, and vLLM sampled from them
        served = {m["id"]: m["root"] for m in _models(url)["data"]}
        assert served[name] == str((out / "rollout_weights" / "step-3").resolve())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
