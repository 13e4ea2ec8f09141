"""bench/gen_vs_hf.py runs end to end on tiny-random and ends with one JSON line holding both sides' rates."""

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gen_vs_hf.py"


def test_gen_bench_last_line_is_json_with_both_rates(capsys):
    spec = importlib.util.spec_from_file_location("gen_vs_hf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--model", "tiny-random", "--prompts", "2", "--n", "2", "--max-new-tokens", "4", "--rounds", "1"])
    finally:
        torch.set_num_threads(threads)  # the bench pins one thread on CPU; give the rest of the run its own
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ours_tokens_per_s", "hf_tokens_per_s", "speedup"} <= set(last)
    # tokens counted up to and including EOS: at most prompts x n x max_new_tokens on each side
    assert 4 <= last["ours_tokens"][0] <= 16 and 4 <= last["hf_tokens"][0] <= 16
    assert abs(last["speedup"] - last["ours_tokens_per_s"] / last["hf_tokens_per_s"]) < 0.02
    # the roofline: measured bandwidth, and per dtype the measured rate over bandwidth-limited rate
    assert last["read_bandwidth_gb_s"] > 0 and last["roofline_batch"] == 16
    for side in ("fp32", "bf16"):
        r = last["roofline"][side]
        assert r["tokens_per_s"] > 0 and abs(r["fraction"] - r["tokens_per_s"] / r["roofline_tokens_per_s"]) < 0.01


FAKE_VLLM = '''
class SamplingParams:
    def __init__(self, n, max_tokens, **kw):
        self.n, self.max_tokens = n, max_tokens


class _Out:
    def __init__(self, ids):
        self.token_ids = ids


class _Req:
    def __init__(self, outs):
        self.outputs = outs


class LLM:
    def __init__(self, model, **kw):
        assert model.endswith("tiny-random-v1") or "tiny" in model, model

    def generate(self, prompts, params, use_tqdm=False):
        return [_Req([_Out(list(range(params.max_tokens))) for _ in range(params.n)]) for _ in prompts]
'''


def test_vllm_peer_hook_runs_the_peer_script_in_another_python(tmp_path, capsys, monkeypatch):
    """--vllm-python runs bench/vllm_peer.py with that interpreter and reads its JSON line. Here the
    interpreter is this one with a stand-in `vllm` package on its path (the real one needs its own venv):
    it returns max_tokens tokens per sample, so the peer must count prompts x n x max_new_tokens."""
    import sys

    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(FAKE_VLLM)
    (pkg / "inputs.py").write_text("def TokensPrompt(prompt_token_ids):\n    return prompt_token_ids\n")
    spec = importlib.util.spec_from_file_location("gen_vs_hf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Args:
        n, max_new_tokens, rounds, threads, device, vllm_dtype = 2, 3, 2, 1, "cpu", "auto"

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rate = bench.run_vllm(sys.executable, "tiny-random", [[1, 2], [3]], Args)
    out = capsys.readouterr().out
    assert out.count(" vllm: ") == 2 and "   12 tokens" in out and rate > 0


def test_bf16_sampling_is_compared_with_bf16_generate(capsys, monkeypatch):
    """--bf16: TRL generates under bf16 autocast (GRPOConfig's default bf16=True), so our bf16 sampler's speedup is
    taken against model.generate under autocast; the float32 generate figure is reported under its own name. The
    HF bf16 side really runs under autocast (its forward sees autocast on)."""
    spec = importlib.util.spec_from_file_location("gen_vs_hf", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []
    real = bench.run_hf

    def spy(model, *a, **k):
        if k.get("bf16"):
            handle = model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
            try:
                return real(model, *a, **k)
            finally:
                handle.remove()
        return real(model, *a, **k)

    monkeypatch.setattr(bench, "run_hf", spy)
    threads = torch.get_num_threads()
    try:
        bench.main(["--model", "tiny-random", "--prompts", "2", "--n", "2", "--max-new-tokens", "4", "--rounds", "1",
                    "--bf16", "--roofline-batch", "0"])
    finally:
        torch.set_num_threads(threads)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen and all(seen)
    assert abs(last["speedup_bf16"] - last["ours_bf16_tokens_per_s"] / last["hf_bf16_tokens_per_s"]) < 0.02
    assert abs(last["speedup_bf16_vs_fp32_generate"] - last["ours_bf16_tokens_per_s"] / last["hf_tokens_per_s"]) < 0.02
