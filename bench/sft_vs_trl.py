"""Same SFT job through alignlab and through TRL's SFTTrainer; prints tokens/s, peak memory and the ratios.

    .venv/bin/python bench/sft_vs_trl.py                       # SmolLM2-135M-Instruct, alpaca_en_demo
    .venv/bin/python bench/sft_vs_trl.py --threads 1           # 1 thread: much faster on a shared machine
    .venv/bin/python bench/sft_vs_trl.py --steps 10 --grad-accum 2 --max-length 512   # a machine of one's own

Defaults (5 steps of 8 rows, micro-batch 2, 256 tokens, full fine-tuning) keep each side under ~3 GB
and ~10 minutes on a busy 2-core CPU; micro-batch 4 x 512 needed ~5 GB and was OOM-killed there.

The job: the same model directory (fp32, full fine-tuning), the same rows (steps x batch_size rows of
alpaca_en_demo.json, written once as TRL conversational prompt/completion JSONL and read by both),
the same batch (batch_size per optimizer step, grad_accum micro-batches), max_length, learning rate,
schedule (constant, no warmup: the two libraries' cosine schedules place the floor a step apart, so final
losses before 4 Dec 2026 23:36 UTC, run with cosine on both, came from slightly different schedules), seed and
torch thread count, completion-only loss on both. Each side runs in its own
process (so peak RSS is its own); TRL runs in its own virtual environment (default
/tmp/alignlab-bench-trl, created here with `pip install torch==<ours> trl`, no system site packages);
it is never a dependency of alignlab. Both sides use their defaults otherwise: alignlab packs
padding-free and applies the LM head chunk-wise to completion tokens; TRL pads each micro-batch
(its default `padding_free=False`) and applies its fused LM head (TRL 1.16 SFTTrainer: tiles of up to 4,096
positions x 32,768 vocabulary entries over every position of the padded micro-batch, recomputed in backward; no
full [rows, vocab] logits) with its entropy/accuracy metrics.

Throughput = non-padding input tokens / seconds inside optimizer steps, skipping the first step
(warm-up). Peak memory = the process's peak RSS (model load included, the same on both sides).
The last line is one JSON object: {"job", "machine", "alignlab": {...}, "trl": {...}, "speedup", "memory_ratio"}.
"machine" is measured at the start of the run (bench/hardware.py): the CPU model, the load, and torch.matmul's
bf16 and fp32 GFLOP/s on the model's MLP shapes at the job's thread count. Each side reports its torch threads,
useful GFLOP/s (6N per real token; N = the parameters in matmuls; see `flops`),
`share_of_peak` (useful FLOP/s over the peak of the job's dtype), and the same over every position it ran
(`processed_*`, padding included). `--order alignlab` runs alignlab alone (no TRL, no ratios).

Measured on the 2-core CPU (AMD EPYC with AVX512-BF16) with no other job running, torch's default
threads, TRL 1.16.0, defaults (SmolLM2, 5 steps x 8 rows, grad_accum 4, 256 tokens, gradient
checkpointing on both sides, as TRL's SFT default), same 5,510 tokens on both sides:
  --bf16 (bf16 autocast on both; the faster setting for both here, `make bench-sft`):
      alignlab 272.0 tokens/s, 3.4 GB; TRL 159.6 tokens/s, 3.7 GB -> speedup 1.70x, memory ratio 0.91
      (an earlier run: 1.70x, 0.94; final loss 1.7626 vs 1.7554, TRL also trains the template's newline).
  float32: alignlab 149.3 tokens/s, 3.1 GB; TRL 101.5 tokens/s, 3.6 GB -> 1.47x, memory ratio 0.85.
With the FLOP accounting (`--bf16 --threads 1 --steps 3`, AMD EPYC, 1 torch thread, machine shared: load 3.7-5.3
on 2 cores; matmul peak measured at the start 138 GFLOP/s bf16, 64 fp32): alignlab 54.8 tokens/s, 59.0 useful
GFLOP/s = 0.43 of peak, 3.2 GB; TRL 36.8 tokens/s, 39.6 useful GFLOP/s = 0.29 (0.39 counting its 3,794 padded
positions against 2,761 real tokens), 3.7 GB -> 1.49x, memory ratio 0.86.
AMD EPYC family 25 model 17, 1 torch thread, 2 Dec 2026 (matmul peak measured at the start 428-487 GFLOP/s bf16):
  --bf16 --threads 1 --gradient-checkpointing selective (alignlab's selective recomputation, TRL's full: the only
      kind it has, and its default): alignlab 202.3 tokens/s, 3.4 GB, share of peak 0.45; TRL 96.6 tokens/s,
      3.7 GB, 0.21 -> speedup 2.09x, memory ratio 0.93 (load 0.8). After the kept LM-head buffers, with the test
      suite on the other core: 180.3 against 85.9 tokens/s -> 2.10x, memory ratio 0.97 (3.6 GB against 3.7).
  --bf16 --threads 1 (full checkpointing on both, before the kept buffers): 181.3 against 105.0 tokens/s ->
      1.73x, memory ratio 0.94.
  After the loops kept glibc's freed blocks mapped and a trainable head's cast for an optimizer step, and the step
  stopped calling the model's own head on an empty slice (ops/buffers.py, train/steps.py), `--bf16
  --gradient-checkpointing selective`: 1 thread (load 1.7) 200.6 against 95.3 tokens/s -> 2.10x, memory ratio
  0.98 (3.66 GB against 3.74), share of peak 0.50 / 0.24; 2 threads (load 1.0) 246.9 against 132.0 -> 1.87x
  (1.63x before), 0.98, 0.32 / 0.17. With the embedding's gradient in the head's block as well (ops/embedding.py),
  2 threads, load 1.1: 231.8 against 145.1 -> 1.60x, 0.97 (3.62 GB against 3.75), 0.27 / 0.17.
Intel Xeon with AMX-BF16 ("Intel(R) Xeon(R) Processor", 2 CPUs), 1 torch thread, 2 Dec 2026 (matmul peak at the start
1,139-1,155 GFLOP/s bf16): `--bf16` (full checkpointing on both) 116.4 against 71.0 tokens/s -> 1.64x, memory 0.92
(3.46 GB against 3.75), share of peak 0.11 / 0.07; `--bf16 --gradient-checkpointing selective` 119.7 against 71.0 ->
1.69x, 0.96, 0.11 / 0.07; the final code of that session (one split per row in span attention) 115.1 against 63.3
-> 1.82x, 0.96 (3.66 GB against 3.79), 0.11 / 0.06; 2 threads (with sdpa's math kernel for short spans, since
dropped) 125.7 against 88.0 -> 1.43x, 0.98. Recomputing the matrix products costs little where they are this fast,
so selective recomputation gains little here; issue 16's 2x is not reached on this CPU.
The same Xeon, 3 Dec 2026, `--bf16 --gradient-checkpointing selective --threads 1`, after short bf16 spans took the
explicit backward (models/attention.py), two runs minutes apart: 95.5 against 74.4 tokens/s -> 1.28x, memory 0.96,
share 0.09 / 0.07 (bf16 peak 1,112 GFLOP/s at the start); then 107.3 against 58.7 -> 1.83x, 0.97, 0.34 / 0.19 (peak
337): TRL's side alone moved 27% between them. Four 6-step runs of alignlab's side alone, explicit and flash backward
alternating, gave 59.5 / 61.3 / 64.1 / 77.4 s: no difference beyond the machine's drift.
With `--compile` (models/compiled.py; paired in-process forward + backward of 8 x 256 tokens: 16.9 -> 15.2 s) the
same day: 86.9 against 65.4 tokens/s -> 1.33x, memory 0.94 (3.52 GB against 3.77), share 0.25 / 0.19 (peak 373 at
the start), first step 24.8 s with the compile; alignlab's side alone eager right after, 93.2 tokens/s, 3.62 GB
(peak 888): at five steps the compile's gain is below the machine's drift, so `compile` stays off by default.
Eager, `--rounds 2` (A B, B A) later that day: 96.9 / 60.4 and 105.3 / 69.1 tokens/s -> 1.56x (rounds 1.60x,
1.52x), memory 0.95 (3.63 GB against 3.84), share 0.16-0.18 / 0.10-0.12 (peak 639 GFLOP/s at the start).
The gain is compute TRL spends and alignlab does not: padding in TRL's micro-batches, the LM head on prompt
tokens and TRL's entropy/accuracy metrics over every position; under bf16 also autocast's weight cache and a
float32 head backward (alignlab runs the chunked head's backward in the forward's precision).
2 threads, 3 Dec 2026 later, same Xeon (`make bench-sft BENCH_ARGS="--threads 2"`: full checkpointing both sides; bf16
peak 1,775 GFLOP/s at the start, 1,191 median), one round: 156.8 against 92.7 tokens/s -> 1.69x, memory 0.94 (3.63 GB
against 3.85), share 0.10 / 0.06.
3 Dec 2026, last runs, same Xeon, 1 thread, after the blocked bf16 span backward (models/attention.py; a paired
in-process A/B of alignlab's side, 6 steps x 2 interleaved runs, old/new 1.075 and 0.991), bf16 matmul peak 1,340 and
1,324 GFLOP/s at the starts, `--rounds 2`: full checkpointing on both 203.2 / 104.5 and 206.2 / 105.9 tokens/s -> 1.95x
(rounds 1.94x, 1.95x), memory 0.91 (3.49 GB against 3.82), share 0.16-0.17 / 0.08; `--gradient-checkpointing
selective` 181.2 / 106.5 and 186.0 / 112.9 -> 1.67x (1.70x, 1.65x), memory 0.92, share 0.15 / 0.09; full
checkpointing at 2 threads (one round, peak 2,514 at the start): 276.1 against 144.9 tokens/s -> 1.91x, memory 0.96
(3.66 GB against 3.79), share 0.12 / 0.06. Issue 16's 2x is not reached.
The same code and Xeon later (3 Dec, afternoon; transformers 5.25 on alignlab's side, measured equal to 5.24 in two
interleaved alignlab-only runs each, 166-172 tokens/s), bf16 matmul peak 1,186 at the start, `--rounds 2`, full
checkpointing on both: 162.3 / 94.0 and 162.0 / 92.7 tokens/s -> 1.74x (1.73x, 1.75x), memory 0.92, share 0.15 / 0.08.
The ratio moves with the machine's level (alignlab's step is the more matmul-bound and slows more). alignlab alone,
same hour: no checkpointing 178.4 tokens/s at 4.29 GB, selective 161.5 at 3.59 GB (recomputation costs ~7% here).
Kept bf16 weight casts (models/kept_casts.py; paired A/B old/new 1.08), same afternoon (peak 1,234): 1.83x (1.85x,
1.82x), memory 0.97, share 0.15 / 0.08.
3 Dec 2026 evening, same Xeon, 1 thread, after the tied head's gradient went to its embedding call and the [V, H]
gradient block was reused across steps (ops/embedding.py, ops/buffers.py; paired A/B old/new 1.04, the same final
loss), bf16 matmul peak 1,264 at the start, `--rounds 2`, full checkpointing on both: 196.9 / 101.5 and 201.8 / 107.9
tokens/s -> 1.90x (rounds 1.94x, 1.87x), memory 0.98 (3.66 GB against 3.76), share 0.17 / 0.09. Issue 16's 2x is not
reached.
Where alignlab's step goes on this job (4 Dec, same Xeon, in-process, every op timed at dispatch over steps 3-5,
~6.8 s a step): matrix products 1.85 s and the chunked head's 0.3 s (together ~690 GFLOP/s of useful work, about
half the peak measured on the model's shapes); the float32 upcasts of the bf16 weight gradients 0.39 s and their
accumulation into `.grad` 0.15 s; attention 0.44 s; everything else in small ops and autograd. A [1536, 576]
gradient's upcast takes ~1 ms in the step against ~0.2 ms in a loop: it writes 3.5 MB that are not in cache (in
the step, a fresh block's first fill took 0.79 ms and the copy into it 0.17 ms; 53 page faults a call), so the
cost is the float32 gradients' own memory traffic, which TRL's step pays too. Tried and not kept: q/k/v and
gate/up as two stacked products under autocast (forward + backward of one layer's five at 406 tokens, three
interleaved pairs: 9.6-10.5 ms stacked against 9.6-9.9 separate), and rotary embeddings as one autograd function
(bit-identical outputs and gradients, 6.5-7.0 against 6.2-7.7 ms at 2 x 777 tokens: no gain).
4 Dec, same Xeon, after packed rows were padded to a multiple of 16 tokens (`pad_to_multiple_of`, recipes/sft.py):
oneDNN compiles a kernel for each new matrix shape (~2 ms; 2,975 against 882 us for a [L, 576] x [576, 1536] bf16
product at a new L and a seen one) and keeps up to 1,024 (~0.6 MB each: +620 MB of malloc'd memory after 1,000
shapes), and packed micro-batches come in every length. The same job run three times in one process: 23.8 s for
steps 2-5 the first time, 21.9 and 22.0 once every shape had been seen. Separate processes, 24 steps, alternating:
steps 13-24 in 68.6 / 69.5 s unpadded against 64.5 / 65.6 padded (5-6%); final loss 1.7553 against 1.7570 after 24
steps (bf16 rounding: gradient reductions over a longer token axis; within the unpadded path's distance from float32
in the test). `--rounds 2`, bf16 matmul peak 1,502 at the start: 250.6 / 125.9 and 241.7 / 119.4 tokens/s ->
**2.01x** (rounds 1.99x, 2.02x), memory 0.94 (3.54 GB against 3.77), share 0.17-0.18 / 0.09, final loss 1.7635 (as
before: five steps stay bit-identical here). A run just before it, with a test run on the other core during TRL's
first round, gave 2.00x (2.06x, 1.94x). Issue 16's SFT 2x is met in this run.
2 threads (`--threads 2 --rounds 2`, bf16 matmul peak 2,750 at the start), the same code: 370.2 / 172.8 and 359.4 /
168.1 tokens/s -> **2.14x** (2.14x, 2.14x), memory 0.94 (3.55 GB against 3.76), share 0.14 / 0.07.
The same final code on an AMD EPYC (family 25 model 17, AVX512-BF16, no AMX; 2 CPUs), 4 Dec afternoon, 1 thread,
`--rounds 2`, bf16 matmul peak 218 GFLOP/s at the start: full checkpointing on both 129.4 / 72.7 and 130.8 / 75.2
tokens/s -> 1.76x (1.78x, 1.74x), memory 0.91 (3.3-3.4 GB against 3.7-3.8), share 0.64 / 0.37, final loss 1.7636
(the Xeon's 1.7635 to rounding); `--gradient-checkpointing selective` (TRL full) 138.0 / 72.4 and 141.8 / 71.6 ->
1.94x (1.91x, 1.98x), memory 0.98, share 0.73 / 0.38 (both counted at 8N a token, so the shares compare tokens/s;
selective runs 6N). With full checkpointing on both, 2x TRL's 0.37 would need alignlab's 8N at 0.74 of the peak
measured on large shapes: at most ~1/4 of its step outside matrix products, and those at full rate.
The same EPYC and code, 4 Dec, 15:00-15:45 UTC, load ~1, bf16 matmul peak 198-220 at the starts, `--rounds 2`: full
checkpointing on both 120.3 / 69.3 and 125.0 / 73.8 tokens/s -> 1.71x (1.74x, 1.69x), memory 0.93, share 0.64-0.67 /
0.37-0.39; `--gradient-checkpointing selective` 133.1 / 67.3 and 133.9 / 66.5 -> **2.00x** (1.98x, 2.01x), memory
0.99 (3.60-3.64 GB against 3.68-3.69), share 0.70 / 0.35.
The allocator's part, same EPYC, 1 thread, one round each, both sides under tcmalloc
(`LD_PRELOAD=.../libtcmalloc_minimal.so.4`, Debian's libtcmalloc-minimal4; the workers inherit it): full checkpointing
127.6 / 80.0 -> 1.59x, memory 0.94 (3.30 against 3.52 GB). TRL alone under tcmalloc: 83.1 tokens/s at 3.52 GB against
62.6 at 3.71 under glibc in the run before it; so TRL runs 8-33% faster under tcmalloc (glibc maps every block above
32 MB afresh, zero-filled page by page, and TRL's fused head's float32 logit tiles are ~100 MB a micro-batch),
alignlab 2-6% (ops/buffers.py already keeps glibc's freed blocks), and part of the ratio under glibc is alignlab's
handling of glibc. alignlab without checkpointing (its own default): 146.7-161.8 tokens/s at 3.59-3.60 GB under
tcmalloc against 137.3-144.5 (118.6-125.5 in a slower hour) at 3.92-3.95 GB under glibc: there glibc's heap holds
0.6-0.7 GB free at the peak (fragmented; the gradients, AdamW's moments and the kept casts each in one block outside
the heap left it as it was), so without checkpointing alignlab is above TRL's 3.7 GB under glibc and below it under
tcmalloc.
The same EPYC, 4 Dec 17:50-18:00 UTC, after a packed micro-batch became one row under span attention (data/collate.py
`Collator(spans=...)`: the cost model's capped rows only add padding when attention is per sequence; here a
micro-batch of two rows of up to 256 tokens, 5,595 -> 5,582 positions over the timed steps, same final loss 1.7636),
`--rounds 2`, bf16 matmul peak 200-217 at the starts: full checkpointing on both 115.4 / 72.9 and 128.3 / 71.2 tokens/s
-> 1.69x (1.58x, 1.80x), memory 0.95 (3.36-3.44 GB against 3.62-3.64); selective 144.9 / 74.8 and 135.0 / 73.3 ->
1.89x (1.94x, 1.84x), memory 0.99: within the runs' spread of the 15:00 ones, as expected of 0.2% fewer positions.
4 Dec 23:40 UTC, same EPYC, after TRL was made to visit the rows in alignlab's order with a constant learning rate on
both and useful FLOPs became 6N a token, `--bf16 --gradient-checkpointing selective --threads 1`, one round, peak 219:
143.4 against 76.9 tokens/s -> 1.86x, memory 1.00 (3.68 against 3.69 GB), share 0.53 / 0.28, speedup_at_peak 3.53x;
final losses 1.7521 / 1.7467.

On an AMD EPYC family 25 model 1 (AVX2 only: no AVX512, no bf16 units), 5 Dec 2026, one thread, one round, float32
on both sides (the make target's --bf16-if-fast; bf16 products ran at 2.3 GFLOP/s here against 92 in float32):
full checkpointing on both: alignlab 70.2 tokens/s, 3.17 GB; TRL 37.9 tokens/s, 3.60 GB -> 1.85x, memory 0.88, share
of peak 0.60 / 0.33; final loss 1.7496 against 1.7439.
The same CPU, 5 Dec 10:42-10:52 UTC, one thread, one round, machine otherwise idle, float32: full checkpointing on
both 68.7 against 46.6 tokens/s -> 1.47x, memory 0.89 (3.18 GB against 3.57), share 0.60 / 0.41, speedup_at_peak
2.47x; `--gradient-checkpointing selective` 77.7 against 45.2 -> 1.72x, memory 1.01 (3.58 GB against 3.53), share
0.68 / 0.39. alignlab's side ran as in the morning (70.2 there), TRL's 19-23% faster than the morning's 37.9.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from peer import (
    add_shared_args,
    alignlab_order,
    compare,
    in_order,
    logged_steps,
    peak_rss_mb,
    run_as_worker,
    step_timer,
)

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


# ---------------------------------------------------------------------------------------------- workers
def alignlab_worker(spec: dict) -> dict:
    """Runs inside alignlab's venv: `alignlab sft` on the shared JSONL, timings from metrics.jsonl."""
    from alignlab.recipes.sft import SFTConfig, run
    cfg = SFTConfig(
        model=spec["model_dir"], data=spec["data"], output_dir=spec["out"] + "/alignlab", eval_split=0.0,
        max_steps=spec["steps"], batch_size=spec["batch_size"], grad_accum=spec["grad_accum"],
        max_length=spec["max_length"], learning_rate=spec["lr"], lr_scheduler="constant", warmup_steps=0, seed=spec["seed"],
        logging_steps=1, save_steps=0, resume="never", progress="none", cpu_threads=spec["threads"],
        packing=not spec["no_packing"], device="cpu",
        gradient_checkpointing={"off": False, "on": True, "selective": "selective"}[spec["gradient_checkpointing"]],
        bf16=spec["bf16"], compile=spec["compile"],
    )
    run(cfg)
    rows, tokens, seconds = logged_steps(cfg.output_dir)
    return {"step_tokens": tokens, "step_seconds": seconds, "peak_memory_mb": peak_rss_mb(),
            "final_loss": rows[-1]["loss"], "gradient_checkpointing": spec["gradient_checkpointing"]}


def trl_worker(spec: dict) -> dict:
    """Runs inside the TRL venv (no alignlab import): SFTTrainer with its defaults on the same JSONL."""
    import torch
    import trl
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    data = load_dataset("json", data_files=spec["data"], split="train")
    micro = spec["batch_size"] // spec["grad_accum"]
    args = trl.SFTConfig(
        output_dir=spec["out"] + "/trl", max_steps=spec["steps"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=spec["grad_accum"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        max_length=spec["max_length"], seed=spec["seed"], logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=spec["bf16"], dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"] != "off",  # TRL has only full checkpointing
    )

    timer = step_timer()
    trainer = in_order(trl.SFTTrainer, spec["order"])(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "num_tokens" in r and "loss" in r]
    cum = [r["num_tokens"] for r in logs]
    tokens = [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]
    return {"step_tokens": tokens, "step_seconds": timer.seconds[: len(tokens)], "peak_memory_mb": peak_rss_mb(),
            "final_loss": logs[-1]["loss"], "trl_version": trl.__version__,
            "gradient_checkpointing": "off" if spec["gradient_checkpointing"] == "off" else "on"}


# ---------------------------------------------------------------------------------------------- driver


def write_rows(data: str, n: int, out: Path) -> Path:
    """The first n SFT rows as TRL conversational prompt/completion JSONL (both sides read this file)."""
    from alignlab.data.sources import load_rows

    rows = load_rows(data, task="sft").rows[:n]
    path = out / "rows.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r.messages[: r.num_prompt], "completion": r.messages[r.num_prompt:]}) + "\n")
    return path


def summarize(res: dict) -> dict:
    """Throughput over steps 2..n (the first step pays one-off costs)."""
    tokens, seconds = res["step_tokens"][1:], res["step_seconds"][1:]
    return {"tokens_per_second": round(sum(tokens) / sum(seconds), 1), "tokens": int(sum(tokens)),
            "seconds": round(sum(seconds), 2), "first_step_seconds": round(res["step_seconds"][0], 2), "peak_memory_mb": round(res["peak_memory_mb"], 1),
            "final_loss": round(res["final_loss"], 4), "torch_threads": res["torch_threads"],
            "gradient_checkpointing": res["gradient_checkpointing"],
            # positions the policy embedded over the timed steps (padding included): the run's total, scaled
            # by the timed steps' share of the run's real tokens
            "processed_tokens": round(res["embedded_tokens"]["trained"] * sum(tokens) / sum(res["step_tokens"])),
            **({"trl_version": res["trl_version"]} if "trl_version" in res else {})}


def flops(res: dict, n: int) -> tuple[float, float]:
    """(useful, processed) FLOPs of a side's timed steps. Useful: 6N per real (non-padding) token, the usual model
    FLOPs (bench/hardware.py; a recomputed forward is work the job chose, not work it needs, as in the DPO
    bench); both sides train the same rows, so their useful FLOPs match and the ratio of their shares is the
    speedup. Processed: what the side ran over every position, padding included (TRL pads each micro-batch;
    alignlab packs): 8N per position under full checkpointing, 6N without it or under selective recomputation
    (which reruns no matrix product). Shares before 4 Dec 2026 23:36 UTC counted 8N as useful under
    checkpointing: three quarters of them is this count."""
    from hardware import train_flops_per_token

    processed = train_flops_per_token(n, recompute=res["gradient_checkpointing"] == "on") * res["processed_tokens"]
    return train_flops_per_token(n, recompute=False) * res["tokens"], processed




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(Path(os.environ.get("ALIGNLAB_DATA", ROOT.parent / "shared" / "data"))
                                         / "llamafactory_demo" / "alpaca_en_demo.json"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-packing", action="store_true", help="alignlab pads too (isolates the packing gain)")
    p.add_argument("--gradient-checkpointing", choices=["on", "off", "selective"], default="on",
                   help="on or off: the same on both sides (TRL's SFT default is on, alignlab's off); selective: "
                        "alignlab's selective recomputation against TRL's full (the only kind it has)")
    add_shared_args(p)
    args = p.parse_args()
    if run_as_worker(args, {"alignlab": alignlab_worker, "trl": trl_worker}):
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hardware import load_config, matmul_params

    from alignlab.models.load import resolve_model

    out = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    spec = {"model_dir": resolve_model(args.model), "data": str(write_rows(args.data, args.steps * args.batch_size, out)),
            "out": str(out), "steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "max_length": args.max_length, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "no_packing": args.no_packing, "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
            "compile": args.compile}
    spec["order"] = alignlab_order(args.steps * args.batch_size, args.seed)  # TRL visits the rows in alignlab's order
    job = {k: spec[k] for k in ("steps", "batch_size", "grad_accum", "max_length", "threads", "gradient_checkpointing", "bf16",
                           "compile")}
    n = matmul_params(load_config(spec["model_dir"]))
    compare(HERE, args, spec, out, summarize, rate="tokens_per_second", job={"model": args.model, "matmul_params": n, **job},
            flops=lambda r: flops(r, n),
            describe=lambda r: f"{r['tokens_per_second']:>9,.1f} tokens/s  peak {r['peak_memory_mb']:,.0f} MB"
                               f"  final loss {r['final_loss']:.4f}")


if __name__ == "__main__":
    main()
