"""Generation throughput: alignlab.rollout.generate against the path TRL's GRPOTrainer takes without vLLM.

TRL (GRPOTrainer._generate, use_vllm=False) repeats every prompt `num_generations` times, left-pads the
batch and calls `model.generate(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=...)`
with its GRPOConfig defaults. Both sides here get the same model, the same token ids, the same sampling
settings and the same batch, in alternating rounds on the same machine. Tokens are counted the same way
on both sides: each completion up to and including its first EOS (padding after EOS is not counted).

    python bench/gen_vs_hf.py --model tiny-random
    python bench/gen_vs_hf.py --model smollm2-135m-instruct --prompts 8 --n 8 --max-new-tokens 64 --bf16

The last output line is one JSON object: {"ours_tokens_per_s", "hf_tokens_per_s", "speedup", ...}.

Clocks. On a GPU the wall clock is used and torch's threads are left alone. On a CPU the default is one
torch thread and the process CPU clock (`--threads 1 --clock cpu`): on a shared machine (here: 2 cores,
several busy processes) multi-threaded ops stall whenever another process holds a core, and wall times
of the same run varied 10x; one thread's CPU seconds measure the work each side does and are stable.
Both clocks are always reported; `speedup` uses the chosen one. `--threads 0 --clock wall` measures
as-is.

Also reported: our sampler with bf16 weights (`--bf16`, SamplingConfig.weights_dtype) against `model.generate`
under bf16 autocast (`speedup_bf16`: TRL's path with its default GRPOConfig bf16=True) and against float32
generate (`speedup_bf16_vs_fp32_generate`; before 4 Dec 2026 23:36 UTC `speedup_bf16` was this one), the machine's memory
read bandwidth (measured here) and, at `--roofline-batch` rows (16), decode tokens/s against the
bandwidth limit (every weight read once per step) for fp32 and bf16 weights; and vLLM's CPU build as a
second peer when `--vllm-python` names the Python of a venv holding it (bench/vllm_peer.py).

Measured 2026-12-01 on the shared 2-core box (`lscpu`: AMD EPYC, AVX512-BF16; 1 torch thread, CPU clock,
load average ~8 from other jobs, so single-run figures move by +-20%), smollm2-135m-instruct, 8 prompts x 8
samples x 64 new tokens, one round: model.generate 95.1 tokens/cpu-s; ours fp32 147.8 (1.55x); ours bf16
195.7 (2.06x; 250.4 vs 101.5 = 2.47x in an earlier run). Read bandwidth 15.1 GB/s (6.7 in a run with more
contention); at batch 16, fp32 103.6 tokens/s = 23% of its 450 tokens/s limit, bf16 159.0 = 18% of 900: on
one core at batch 16 the matrix products are compute-bound (single-thread GEMMs at ~29 GFLOP/s), not
bandwidth-bound, so the bandwidth roofline is not reached. Almost every row of this batch runs to 64
tokens, so continuous batching (a 16-row batch over the 64 rows) is at parity with static batches here
(127.7 vs 129.5 tokens/cpu-s, bf16); it pays where lengths are ragged (docs/serving.md: 1.4x on short
TruthfulQA answers). vLLM: not installed on this box.

Re-measured 2026-12-02 after the bf16-sampler fixes (fp32 KV cache on the bf16 path; the prefill's last position
gathered, not sliced: docs/serving.md), same box and job, 1 torch thread, CPU clock, one round, with two
SmolLM2 training runs on the 2 cores (load ~3): model.generate 86.5 tokens/cpu-s; ours fp32 128.9 (1.49x);
ours bf16 219.5 (2.54x). Read bandwidth 19.0 GB/s; at batch 16, fp32 88.9 tokens/s = 16% of 564, bf16 121.9 =
11% of 1,129 (the contention hits these single-run figures hardest). The 4x and 50%-roofline goals remain unmet.

Intel Xeon with AMX-BF16 ("Intel(R) Xeon(R) Processor", 2 CPUs), 2 Dec 2026, same job, 1 torch thread, CPU clock, two
rounds, nothing else running, after the bf16 sampler's Linears went through oneDNN with prepacked weights
(rollout/weights.py; 224 -> 263 tokens/s on this batch in a probe): model.generate 84.7 tokens/cpu-s; ours fp32 136.6
(1.61x); ours bf16 252.0 (2.98x). Read bandwidth 8.8 GB/s; at batch 16, fp32 72.7 tokens/s = 28% of 263, bf16 138.4 =
26% of 526. A profile at batch 16: the Linears 52% of the time at ~3.5 GB/s of weights read, the prepacking 9%
(once per call), attention 7%, dtype copies 10%.

vLLM side by side, the same Xeon, 3 Dec 2026 (same code as the 2 Dec run), `--bf16 --rounds 2 --vllm-python
/tmp/alignlab-vllm/bin/python` (vLLM 0.32 CPU build, bf16, its own venv as docs/serving.md sets it up;
OMP_NUM_THREADS=1 for every side, nothing else running): model.generate 89.2 tokens/cpu-s; ours fp32 144.2 (1.62x);
ours bf16 307.8 (3.45x; 314.7 and 300.8 per round, wall within 0.1% of CPU); vLLM 261.7 and 292.6 per round = 277.2
tokens/s wall. Our bf16 sampler (what `weights_dtype: auto` picks on this CPU) is **1.11x vLLM** on this batch; our
fp32 sampler 0.52x. (vLLM's figure is wall clock, and its API front-end process runs beside its one-thread engine.)
Read bandwidth 10.8 GB/s; at batch 16, fp32 72.6 tokens/s = 23% of 322, bf16 129.3 = 20% of 645: the 50% goal is
not reached (the bf16 Linears alone stream their weights at ~4.2 GB/s through oneDNN at 16 rows, measured with
cold caches in a probe: 65 ms a step against the 25 ms the measured bandwidth allows for the whole step).

The same Xeon later on 3 Dec, after the bf16 sampler swapped its copies into the modules instead of going through
torch.func.functional_call (12% faster in a paired in-process A/B, same tokens), `--bf16 --rounds 1 --vllm-python ...`,
in a slow phase of the machine (model.generate 28% below the morning's rate): model.generate 63.8 tokens/cpu-s; ours
fp32 114.8 (1.80x); ours bf16 240.4 (3.77x); vLLM 284.6 tokens/s wall: our bf16 sampler **0.84x vLLM** in this run
(1.11x in the morning's), so "at least vLLM's tokens/s" is met in one of the two side-by-side runs, not reliably.
Read bandwidth 9.4 GB/s; at batch 16, fp32 68.0 tokens/s = 24% of 280, bf16 125.6 = 22% of 561.
Again an hour later with the final code, `--rounds 2`: model.generate 71.7; ours fp32 124.2 (1.73x); ours bf16 223.7
(3.12x; 218.9 and 228.4 per round); vLLM 289.9 and 288.6 per round = 289.2 -> our bf16 **0.77x vLLM**. So vLLM's rate
held at 277-290 tokens/s in all three runs while ours moved between 224 and 308 with the machine: at vLLM's rate in
one run of three. Read bandwidth 7.8 GB/s; at batch 16, fp32 61.2 tokens/s = 26% of 232, bf16 175.8 = **38%** of 465
(the per-forward module walk the swap removed weighed most at 16 rows: 125.6 and 129.3 tokens/s before). 50%: not
reached.
3 Dec 2026 later, same Xeon and code, `--bf16 --rounds 2 --vllm-python ...` (1 torch thread, CPU clock; read bandwidth
10.8 GB/s): model.generate 84.6 tokens/cpu-s; ours fp32 142.0 (1.68x); ours bf16 259.1 (3.06x; 273.3 and 244.8 per
round); vLLM 409.9 and 408.3 tokens/s wall per round -> our bf16 sampler **0.63x vLLM** (fp32 0.35x). vLLM's rate
on this batch has now ranged 277-410 tokens/s between runs of unchanged code on both sides, ours 224-308. At batch
16: fp32 84.0 tokens/s = 26% of 321, bf16 198.3 = 31% of 642. Neither goal is met.
3 Dec 2026 evening, same Xeon, 1 torch thread, CPU clock, with the lean Llama forward in the bf16 sampler
(rollout/decode_step.py: the model's ops without its module calls, the same logits bit for bit). `--bf16` (3 rounds):
model.generate 149.0 tokens/s; ours fp32 255.8 (1.72x); ours bf16 515.2 (**3.46x**); read bandwidth 14.9 GB/s; at batch
16, fp32 133.9 tokens/s = 30% of 443, bf16 318.1 = 36% of 886. `--bf16 --rounds 2 --vllm-python /tmp/alignlab-vllm/bin/python`
(vLLM 0.32 CPU build, freshly installed as docs/serving.md says): model.generate 157.5; ours fp32 266.4 (1.69x); ours
bf16 501.0 (3.18x); vLLM 596.6 and 610.6 per round = 603.6 tokens/s wall (its fastest here yet; 277-410 before) ->
our bf16 **0.83x vLLM** (fp32 0.44x); read bandwidth 13.6 GB/s; at batch 16, fp32 140.3 = 35% of 406, bf16 348.7 =
**43%** of 812. Neither goal is met (vLLM's rate, 50% of the roofline).
3 Dec 2026 night, same Xeon, 1 torch thread, CPU clock, after the Llama step's fused calls (one q/k/v product,
residual adds and SwiGLU as oneDNN post-ops, bf16 attention on AMX; decode_step.py) and the two-level inverse-CDF
sampler (generate.inverse_cdf: 0.8 ms against 3.5 ms a step at 16 rows, 2.7 against 13.8 at 64), and with the
roofline's decode rate now the fastest of 3 runs per length: `--bf16 --rounds 2 --vllm-python
/tmp/alignlab-vllm/bin/python`: model.generate 157.5 tokens/cpu-s; ours fp32 266.8 (1.69x); ours bf16 663.2
(**4.21x**; 654.5 and 672.0 per round); vLLM 637.8 and 635.8 per round = 636.8 tokens/s wall -> our bf16 **1.04x
vLLM** (fp32 0.42x); read bandwidth 13.2 GB/s; at batch 16, fp32 133.9 tokens/s = 34% of 394, bf16 380.4 = **48%**
of 787. Two runs earlier the same night (the first before the sampler change, single-run roofline rate): bf16 614.5
tokens/s = 0.93x vLLM (659.6), roofline 43% (384.7 of 900 at 15.1 GB/s); then 644.0 = **1.07x** vLLM (598.7), 4.20x
model.generate, roofline 46% (371.9 of 815 at 13.7 GB/s). vLLM's rate: met in the last two runs; 4x model.generate:
met; 50% of the roofline: not met (43-48%; at batch 16 a step is ~41 ms: ~27 ms of packed products, which reach
~12 GB/s even back to back, ~7 ms of attention, the rest small ops and the sampler).
4 Dec, just after midnight, same Xeon and code, the same command: model.generate 159.3 tokens/cpu-s; ours fp32 279.1
(1.75x); ours bf16 643.7 (4.04x; 607.2 and 679.9 per round); vLLM 668.9 and 678.5 per round = 673.7 tokens/s wall ->
our bf16 0.96x vLLM (fp32 0.41x); read bandwidth 14.5 GB/s; at batch 16, fp32 142.7 tokens/s = 33% of 430, bf16
405.4 = 47% of 860. Across the three runs since the fused step: vLLM 1.07x, 1.04x, 0.96x; roofline 46-48%.
Tried that night and not kept: the weights' pages as transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`:
450 MB of huge pages taken, 151 packed products back to back 2-3% faster, a whole decode step unchanged, 39.2-40.7 ms
either way in three interleaved pairs).
4 Dec afternoon, AMD EPYC (family 25 model 17, AVX512-BF16, no AMX; 2 CPUs), one torch thread, the same code and command, vLLM 0.32's
CPU build side by side: model.generate 107.7 tokens/cpu-s; ours fp32 163.0 (1.51x); ours bf16 321.6 (2.99x; 326.8 and
316.5 per round); vLLM 312.8 and 314.1 per round -> our bf16 **1.03x vLLM** (fp32 0.52x); read bandwidth 23.2 GB/s;
at batch 16, fp32 106.8 tokens/s = 15% of 690, bf16 280.6 = 20% of 1,379. Without AMX a 16-row bf16 step is bound
by arithmetic, not by reading the weights: 16 x 2 x 134M FLOPs at the 210 GFLOP/s this CPU's bf16 products reach on
large shapes would allow ~780 tokens/s, below the bandwidth limit, and 16-row products reach well under that rate.
vLLM, bound the same way, runs level with us.
4 Dec 23:30 UTC, same EPYC, `--model smollm2-135m-instruct --bf16 --rounds 1` (no vLLM): generate 118.9 tokens/cpu-s in
float32 and 181.4 under bf16 autocast; ours fp32 182.9 (1.54x), ours bf16 350.2 -> **1.93x** generate under autocast
(the like-for-like figure; 2.95x against float32 generate, the figure earlier runs reported as `speedup_bf16`); read
bandwidth 27.2 GB/s; at batch 16 fp32 126.9 tokens/s = 16% of 808, bf16 310.1 = 19% of 1,616.
AMD EPYC family 25 model 1 (AVX2 only: no AVX512, no bf16 units; 2 CPUs), 5 Dec 2026 11:00-11:25 UTC, one thread,
machine otherwise idle, `--vllm-python ...`: ours (float32) 171.7 tokens/cpu-s against model.generate's 101.2 (1.70x);
vLLM 0.32 in bf16 (then the only dtype the bench gave it) 22.3 tokens/s wall, a seventh of ours: this CPU has no bf16
units. With `--vllm-dtype` (auto: float32 here) and `--rounds 2 --roofline-batch 0`: ours 164.2 against vLLM float32
129.8 tokens/s wall -> **1.26x**, model.generate 99.4 (1.65x). Decode at batch 16 against the read-bandwidth roofline
(20.4 GB/s measured): float32 116.1 tokens/s = 19% of 607.7, bf16 33.8 = 3% (bf16 products run at 2 GFLOP/s here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

# Openings of movie reviews (the sentiment task's kind of prompt); used when the IMDb file is absent.
FALLBACK_PROMPTS = [
    "This movie was", "I went to see this film with", "The acting in this picture", "Honestly, the plot",
    "From the first scene I knew", "My wife and I watched", "The director's last work", "What a waste of",
    "I have never laughed so", "The soundtrack alone", "Ten minutes in, the", "If you like horror films",
]


def load(name: str, device: str = "cpu"):
    try:
        from alignlab.models.load import load_model, load_tokenizer
    except ImportError:  # models helper not merged yet: accept a local HF directory
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        tok.pad_token = tok.pad_token or tok.eos_token
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).to(device).eval(), tok
    return load_model(name, device=device).eval(), load_tokenizer(name)


def review_openings(k: int) -> list[str]:
    path = Path(os.environ.get("ALIGNLAB_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    path = path / "imdb" / "movie_review.jsonl"
    if not path.is_file():
        return (FALLBACK_PROMPTS * k)[:k]
    out = []
    with path.open() as f:
        for line in f:
            words = json.loads(line)["review"].replace("<br />", " ").split()
            out.append(" ".join(words[: 4 + len(out) % 9]))  # 4..12 words: ragged lengths, as real prompts
            if len(out) == k:
                break
    return out


def encode(tok, texts: list[str]) -> list[list[int]]:
    if tok.chat_template:  # instruct model: conversational prompts, as TRL renders them
        msgs = [[{"role": "user", "content": f"Continue this movie review: {t}"}] for t in texts]
        rendered = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
        return [tok(r, add_special_tokens=False).input_ids for r in rendered]
    return [tok(t).input_ids for t in texts]


def eos_ids(model, tok) -> set[int]:
    from alignlab.rollout.encode import eos_token_ids

    return set(eos_token_ids(model, tok))


def sync() -> None:
    """Wait for queued GPU work, so a wall clock read after it counts that work (a no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Clock:
    """Wall and process-CPU seconds of one call."""

    def __enter__(self):
        sync()
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync()
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def run_hf(model, tok, prompts, n, max_new, seed, bf16=False) -> tuple[int, Clock]:
    """TRL's transformers path: prompts repeated n times, one left-padded batch, model.generate; with `bf16`
    under bf16 autocast, as TRL generates with GRPOConfig's default bf16=True."""
    if bf16:
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            return run_hf(model, tok, prompts, n, max_new, seed)
    rows = [p for p in prompts for _ in range(n)]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    eos = eos_ids(model, tok)
    torch.manual_seed(seed)
    with Clock() as clock:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                             eos_token_id=sorted(eos), disable_compile=True)
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += next((i + 1 for i, x in enumerate(row) if x in eos), len(row))
    return tokens, clock


def run_ours(model, tok, prompts, n, max_new, seed, weights_dtype="model", batch_size=None) -> tuple[int, Clock]:
    from alignlab.rollout.generate import SamplingConfig, generate

    cfg = SamplingConfig(max_new_tokens=max_new, temperature=1.0, top_p=1.0, top_k=0, seed=seed,
                         batch_size=batch_size or len(prompts) * n, weights_dtype=weights_dtype)
    with Clock() as clock:
        res = generate(model, tok, prompts, cfg, n=n)
    return res.num_tokens, clock


def read_bandwidth(mb: int = 512, repeats: int = 3, device: str | torch.device = "cpu") -> float:
    """The machine's memory read bandwidth in bytes/s with the current torch threads: the best of a few
    sums over a float32 buffer far larger than any cache (a sum reads every byte once, writes nothing)."""
    x = torch.ones(mb * (1 << 20) // 4, device=device)
    x.sum()  # touch the pages
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        x.sum()
        sync()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def decode_rate(model, tok, prompts, batch: int, weights_dtype: str, timer, steps=(8, 40), repeats: int = 3) -> float:
    """Decode tokens/s (`timer`: the wall or the process CPU clock) at a constant batch of `batch` rows: EOS is ignored so no row leaves, and the
    prefill is cancelled out by timing two lengths and dividing the extra tokens by the extra time. Each length is
    timed `repeats` times and the fastest kept, as read_bandwidth keeps its fastest pass: a fraction of best-case
    bandwidth is taken from a best-case rate, not from whichever run a noisy neighbour slowed."""
    from alignlab.rollout.engine import Engine
    from alignlab.rollout.generate import SamplingConfig, _sampler, sampling_forward

    times = []
    for max_new in steps:
        cfg = SamplingConfig(max_new_tokens=max_new, seed=0, batch_size=batch, weights_dtype=weights_dtype)
        best = float("inf")
        for _ in range(repeats):
            gen = torch.Generator(device=model.device).manual_seed(0)
            eng = Engine(model, sampling_forward(model, cfg), [prompts[0]], [0], batch, cfg, [], tok.pad_token_id,
                         _sampler(cfg, gen, None))
            with torch.inference_mode():
                sync()
                t = timer()
                eng.run()
                sync()
                best = min(best, timer() - t)
        times.append(best)
    return batch * (steps[1] - steps[0]) / (times[1] - times[0])


def roofline(model, tok, prompts, batch: int, bandwidth: float, timer) -> dict:
    """Fraction of the memory-bandwidth limit reached at `batch` rows: a decode step must read every weight
    once, so at most bandwidth / weight bytes steps per second, `batch` tokens each (KV-cache reads, small
    here, are left out, which makes the bound optimistic: the fraction is if anything understated)."""
    out = {}
    for name, wd in (("fp32", "float32"), ("bf16", "bfloat16")):
        size = 4 if wd == "float32" else 2
        limit = batch * bandwidth / (sum(p.numel() for p in model.parameters()) * size)
        rate = decode_rate(model, tok, prompts, batch, wd, timer)
        out[name] = {"tokens_per_s": round(rate, 1), "roofline_tokens_per_s": round(limit, 1),
                     "fraction": round(rate / limit, 3)}
    return out


def vllm_dtype(args) -> str:
    if args.vllm_dtype != "auto":
        return args.vllm_dtype
    from alignlab.rollout.weights import cpu_has_bf16_units

    return "bfloat16" if args.device != "cpu" or cpu_has_bf16_units() else "float32"


def run_vllm(python: str, model: str, prompts: list[list[int]], args) -> float:
    """Median wall tokens/s of vLLM on the same batch, in its own venv (bench/vllm_peer.py)."""
    import subprocess
    import sys

    from alignlab.models.load import resolve_model

    job = {"model": resolve_model(model), "prompts": prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
           "rounds": args.rounds, "dtype": vllm_dtype(args)}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or torch.get_num_threads()))
    # vLLM's CPU defaults failed to start its engine here (thread binding on a shared 2-core machine): no binding,
    # and a KV cache of 2 GiB (the batch needs ~0.1), unless the caller set them.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    proc = subprocess.run([python, str(Path(__file__).with_name("vllm_peer.py")), json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"vLLM peer failed ({python}):\n{proc.stderr[-3000:]}")
    mark = "alignlab-vllm-peer-result: "  # bench/vllm_peer.py's MARK (vLLM's own logs share its stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(mark)]
    if not lines:
        sys.exit(f"vLLM peer printed no result line:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1][len(mark):])
    for r, (t, w) in enumerate(zip(out["tokens"], out["wall"])):
        print(f"round {r} vllm: {t:5d} tokens, wall {w:6.2f} s = {t / w:8.1f} tokens/s", flush=True)
    return statistics.median(t / w for t, w in zip(out["tokens"], out["wall"]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU figures of `make gpu-check`)")
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (GRPO num_generations)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side, alternating")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (0 = leave as is; CPU default 1)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default=None, help="CPU default cpu, GPU wall")
    ap.add_argument("--bf16", action="store_true", help="also time our sampler with bf16 weights (weights_dtype)")
    ap.add_argument("--batch-size", type=int, default=None, help="our rows in flight (default: all at once)")
    ap.add_argument("--vllm-python", metavar="PATH", help="python of a venv with vLLM: run bench/vllm_peer.py "
                    "there on the same batch and report it as a second peer (wall clock)")
    ap.add_argument("--vllm-dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                    help="vLLM's weights: auto = bfloat16 on a GPU or a CPU with bf16 matrix units, else float32 (an "
                         "AVX2-only AMD EPYC, one thread, ran vLLM's bf16 at 22 tokens/s on this batch)")
    ap.add_argument("--roofline-batch", type=int, default=16, help="batch of the roofline measurement (0 = skip)")
    args = ap.parse_args(argv)
    model, tok = load(args.model, args.device)
    on_cpu = model.device.type == "cpu"
    threads = args.threads if args.threads is not None else (1 if on_cpu else 0)
    clock = args.clock or ("cpu" if on_cpu else "wall")
    if threads:
        torch.set_num_threads(threads)
    prompts = encode(tok, review_openings(args.prompts))
    run_ours(model, tok, prompts[:2], 2, 4, 0)  # warm-up both paths (allocator, kernels)
    run_hf(model, tok, prompts[:2], 2, 4, 0)
    ours, hf, ours_bf16, hf_bf16 = [], [], [], []
    sides = [("ours", lambda *a: run_ours(*a, batch_size=args.batch_size), ours), ("hf", run_hf, hf)]
    if args.bf16:
        sides.append(("ours_bf16", lambda *a: run_ours(*a, "bfloat16", args.batch_size), ours_bf16))
        sides.append(("hf_bf16", lambda *a: run_hf(*a, bf16=True), hf_bf16))
    for r in range(args.rounds):
        for side, fn, acc in sides:
            tokens, c = fn(model, tok, prompts, args.n, args.max_new_tokens, 1000 + r)
            acc.append((tokens, c))
            print(f"round {r} {side:4s}: {tokens:5d} tokens, wall {c.wall:6.2f} s = {tokens / c.wall:8.1f} "
                  f"tokens/s, cpu {c.cpu:6.2f} s = {tokens / c.cpu:8.1f} tokens/cpu-s", flush=True)

    def rate(acc, which):
        return statistics.median(t / getattr(c, which) for t, c in acc)

    o, h = rate(ours, clock), rate(hf, clock)
    result = {
        "bench": "gen_vs_hf", "model": args.model, "device": str(model.device), "prompts": args.prompts,
        "n": args.n, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "clock": clock,
        "ours_tokens": [t for t, _ in ours], "hf_tokens": [t for t, _ in hf],
        "ours_wall_tokens_per_s": round(rate(ours, "wall"), 1), "hf_wall_tokens_per_s": round(rate(hf, "wall"), 1),
        "ours_tokens_per_s": round(o, 1), "hf_tokens_per_s": round(h, 1), "speedup": round(o / h, 2),
    }
    if args.bf16:  # bf16 against bf16 (TRL's default path); against float32 generate as well, labelled so
        b, hb = rate(ours_bf16, clock), rate(hf_bf16, clock)
        result.update(ours_bf16_tokens_per_s=round(b, 1), hf_bf16_tokens_per_s=round(hb, 1),
                      speedup_bf16=round(b / hb, 2), speedup_bf16_vs_fp32_generate=round(b / h, 2))
    if args.vllm_python:
        v = run_vllm(args.vllm_python, args.model, prompts, args)
        result.update(vllm_tokens_per_s=round(v, 1), vllm_dtype=vllm_dtype(args),
                      speedup_vs_vllm_wall=round(rate(ours, "wall") / v, 2))
        if args.bf16:
            result["speedup_bf16_vs_vllm_wall"] = round(rate(ours_bf16, "wall") / v, 2)
    if args.roofline_batch:
        bw = read_bandwidth(device=model.device)
        result["read_bandwidth_gb_s"] = round(bw / 1e9, 2)
        timer = time.process_time if clock == "cpu" else time.perf_counter
        result["roofline"] = roofline(model, tok, prompts, args.roofline_batch, bw, timer)
        result["roofline_batch"] = args.roofline_batch
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
