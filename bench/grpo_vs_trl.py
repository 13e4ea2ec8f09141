"""Same GRPO job through alignlab and through TRL's GRPOTrainer; prints seconds per step, peak memory, ratios.

    .venv/bin/python bench/grpo_vs_trl.py --model tiny-random              # a smoke run (seconds)
    .venv/bin/python bench/grpo_vs_trl.py --threads 1                      # SmolLM2-135M-Instruct, fp32
    .venv/bin/python bench/grpo_vs_trl.py --threads 1 --bf16               # the same under bf16 autocast
    .venv/bin/python bench/grpo_vs_trl.py --threads 1 --bf16-sampling      # float32 training, our sampler in bf16

The job: the same model directory as policy (full fine-tuning, no LoRA) and as frozen KL reference (each
side loads its own second copy); the same prompts (steps x prompts alignlab built-in sentiment openings,
`alignlab.data.builtin.sentiment_prompts`, written into the spec as plain strings: no chat template on
either side, each side draws them in its own seeded order); the same reward function, `distinct_words`
below (the fraction of distinct words in a completion: deterministic, defined once, imported by neither
side from the other); the same group size (num_generations), max new tokens (TRL max_completion_length),
temperature 1, top_p 1 and no top-k, KL coefficient beta (k3 estimator in the loss on both), clip 0.2,
learning rate (constant, no warmup), gradient clipping 1.0, seed and torch thread count. One rollout of
prompts x generations completions per optimizer step, one optimizer step per rollout (on-policy, no
micro-batching: TRL per_device_train_batch_size = prompts x generations completions, steps_per_generation
1, gradient_accumulation_steps 1; alignlab batch_size = prompts, mini_batch_size 0, grad_accum 1), the
token-mean loss (TRL loss_type "dapo" = alignlab loss_agg "token-mean"), group-std reward scaling.
Each side runs in its own process (so its peak RSS is its own); TRL runs in its own virtual environment
(default /tmp/alignlab-bench-trl, made by bench/peer.py: `pip install torch==<ours> trl`), generating with
transformers' `generate` (use_vllm False); it is never a dependency of alignlab.

Seconds per step = wall seconds of each RL step (sampling + scoring + reference/old log-probs + update),
averaged over steps 2..n: the first step pays one-off costs (allocator warm-up, lazy inits) and is skipped.
CPU seconds per step = the worker process's CPU time over the same steps: with one torch thread it is the
work done, much less sensitive than wall time to other jobs on a shared machine (compare both).
Peak memory = the process's peak RSS at the end of the last step (model loads included, the same on both
sides; alignlab's final save_model comes after and is not counted). Completions differ between the sides
(different samplers), so lengths (tokens generated per step) are reported with the times.
The last line is one JSON object: {"job", "alignlab": {...}, "trl": {...}, "speedup", "memory_ratio"},
speedup = TRL seconds per step / alignlab seconds per step.

Measured on the 2-core development CPU (`lscpu`: AMD EPYC, AVX512-BF16, 2 CPUs, 1 thread per core), SHARED
with other engineers' tests and benchmarks (load average about 1 to 7 during the runs; the sides run one after
the other, so a load change between them moves the wall ratio), one torch thread per side (`--threads 1`),
torch 2.13.0, TRL 1.16.0, SmolLM2-135M-Instruct, 4 prompts x 4 samples x 32 new tokens (almost all answers
run to the limit: ~505 tokens a step on both sides), beta 0.04, lr 1e-5:
  float32, `--steps 4` (3 timed steps): alignlab 18.6 s/step (17.9 CPU s), 4.20 GB; TRL 22.5 s/step
      (21.8 CPU s), 4.53 GB -> speedup 1.21x (CPU time 1.22x), memory ratio 0.93.
      alignlab's step: 5.7 s generation (~89 tokens/s), 9.6 s policy update, ~3.3 s reference log-probs
      and the rest. Earlier `--steps 3` runs (2 timed steps, heavier load): 1.15x and 1.02x, memory 0.91.
  bf16, `--steps 4 --bf16`: alignlab 12.8 s/step (12.7 CPU s), 3.83 GB; TRL 15.6 s/step (15.3 CPU s), 4.42 GB
      -> speedup 1.22x (CPU time 1.21x), memory ratio 0.87. alignlab: 5.5 s generation, 5.8 s update.
      Earlier `--steps 3` runs: 1.37x and 0.84x (alignlab's side ran while the load rose), memory 0.85, 0.87.
So alignlab is about 1.2x TRL's step rate with 7-13% less peak memory on this job; issue 14's 2.5x target is
not reached. Under bf16 the update speeds up 1.7x but generation does not (5.7 -> 5.5 s): GRPO's rollouts
decode under autocast and never use the engine's bf16 sampling weights (SamplingConfig.weights_dtype stays
"model": rl/rollout.py does not set it and PolicyGradientConfig has no key for it), and at ~90 tokens/s
generation is now the largest part of a bf16 step.
2 Dec 2026, same box, load ~2, `--steps 4`: float32 alignlab 15.8 s/step, 3.83 GB; TRL 19.5 s/step, 4.51 GB -> 1.23x,
memory 0.85 (generation 5.7 s, update 7.6 s: prompt-shared forwards). bf16 (bf16 sampling weights + rollout_is
tis): alignlab 10.6 s/step, 3.62 GB; TRL 13.4 s/step, 4.41 GB -> 1.27x, memory 0.82 (generation 3.6 s, update 4.6 s).
2 Dec 2026 later, AMD EPYC family 25 model 17, load 0.4-0.5, after the LM head's buffers were kept across steps
(ops/logprobs.py): float32 alignlab 10.8 s/step, 3.81 GB; TRL 14.3 s/step, 4.50 GB -> 1.32x, memory 0.85 (generation
3.4 s, update 5.6 s). bf16: alignlab 6.07 s/step, 3.63 GB; TRL 9.98 s/step, 4.41 GB -> 1.64x, memory 0.82 (generation
1.8 s, update 2.9 s). After the loops kept glibc's freed blocks mapped (ops/buffers.py), bf16, load 1.6: alignlab
5.63 s/step, 3.84 GB; TRL 8.79 s/step, 4.42 GB -> 1.56x, memory 0.87: no change beyond the run-to-run spread.
Intel Xeon with AMX-BF16 ("Intel(R) Xeon(R) Processor", 2 CPUs), 2 Dec 2026, `--steps 4`, one thread per side; the
machine's bf16 matmul rate moved between 360 and 1,131 GFLOP/s from run to run, and both sides with it:
  bf16, before this session's changes: alignlab 13.98 s/step (generation 5.3 s, update 6.6 s, the old-log-prob and
      reference forwards ~2.1 s), 3.95 GB; TRL 20.89 s/step, 4.46 GB -> 1.49x, memory 0.89.
  after each change, in order (one run each): the old log-probs from the update's own forward 12.14 against 23.94
      -> 1.97x; short spans through sdpa's math kernel (chosen for differentiated spans only) 10.15 against
      17.82 -> 1.76x; one split per row in span attention and the fused chunked head in RL forwards 7.61 against
      15.52 -> 2.04x (generation 2.95 s, update 3.84 s), 0.92; the math kernel chosen by span shape only (a frozen
      reference must give the policy's bits) 10.47 against 17.56 -> 1.68x, again 10.61 against 17.96 -> 1.69x;
      a paired A/B (math on alternate steps) then showed no gain (5.98 s against 5.70 s for the non-sampling part)
      and it was dropped. The final code: 9.26 against 16.84 s/step -> 1.82x (generation 3.5 s, update 3.9 s),
      memory 0.90 (4.01 GB against 4.46).
  float32, after them: alignlab 12.88 s/step (generation 5.6 s at 90 tokens/s, update 5.7 s), 4.03 GB; TRL 17.11,
      4.59 GB -> 1.33x, memory 0.88.
3 Dec 2026, the same Xeon and code (the vLLM side by side in bench/gen_vs_hf.py ran the same day), one run each:
  bf16: alignlab 11.47 s/step (generation 4.8 s, update 5.3 s), 4.01 GB; TRL 20.79, 4.46 GB -> 1.81x, memory 0.90
      (both sides ~25% slower than the day before: the machine's bf16 matmul median was 489 GFLOP/s, 331 in the next run).
  float32: alignlab 17.23 s/step (generation 7.1 s, update 7.9 s), 3.90 GB; TRL 22.84, 4.56 GB -> 1.33x, memory 0.86.
  float32 training with bf16 sampling and rollout_is tis on alignlab's side (`--bf16-sampling`; TRL samples with its
      float32 model): alignlab 14.07 s/step (generation 4.2 s, update 7.7 s), 4.01 GB; TRL 24.12, 4.52 GB -> 1.71x
      (1.62x against the float32 run's TRL), memory 0.89.
After span attention's explicit backward for short differentiated spans (models/attention.py), 3 Dec, same Xeon:
  bf16: alignlab generation 6.55 s, training 5.77 s; TRL 24.42 s/step -> 1.75x (a slow run for both sides).
  float32: alignlab 20.67 s/step (generation 9.3 s, update 9.0 s), 3.99 GB; TRL 27.71, 4.56 GB -> 1.34x, memory 0.87.
After the bf16 sampler swapped its bf16 copies into the modules instead of torch.func.functional_call (rollout/weights.py;
generation 12% faster in a paired in-process A/B, same tokens), 3 Dec, same Xeon, one run each:
  bf16: alignlab 12.98 s/step (generation 5.76 s, update 5.65 s), 3.92 GB; TRL 20.88, 4.44 GB -> 1.61x, memory 0.88
      (the machine's bf16 matmul rate at its slow level, 359 GFLOP/s peak, 331 median).
  float32: alignlab 16.57 s/step (generation 7.03 s, update 7.35 s), 3.97 GB; TRL 21.37, 4.53 GB -> 1.29x, memory 0.88
      (bf16 matmul 944 GFLOP/s in that run: the machine's rate moves 3x between runs and the ratio with it).
  A span micro-benchmark then showed the explicit short-span backward losing to flash's in float32 at every size
  (flash's per-block cost is its bf16 conversions), so float32 spans went back to flash; float32 after that: alignlab
  15.31 s/step (generation 6.48 s, update 6.73 s), 3.96 GB; TRL 18.42, 4.54 GB -> 1.20x, memory 0.87.
  bf16, the final code (the bf16 path as in the 1.61x run), load 0.2, bf16 matmul peak 601: alignlab 10.21 s/step
      (generation 4.58 s, update 4.46 s), 3.96 GB; TRL 22.10, 4.41 GB -> **2.16x**, memory 0.90.
Across the Xeon runs of the current code the bf16 ratio lies between 1.6x and 2.2x and the float32 one between 1.20x and
1.34x; issue 14's 2.5x is not reached. Where a step goes (bf16, in-process profile): generation ~4 s of which the
Linears are half (oneDNN bf16 at 16 rows reads weights at ~5.6 GB/s), Python and dispatch ~1 s (a hand-written
Llama decode step without transformers' module calls gave the same bits and saved only 4% of a step, so it was not
kept); the update ~3.2 s (mm 36%, dtype casts 17%, fused AdamW 7%); the frozen reference's forward ~0.75 s.
Later on 3 Dec, `--bf16 --rounds 2` (A B, B A; each round's ratio from adjacent runs): 9.41 / 19.15 and 8.55 /
20.44 s/step -> 2.21x (rounds 2.04x, 2.39x), memory 0.89 (peak 1,011 GFLOP/s at the start); with `--compile`
(models/compiled.py; the reference compiled too, float32 weights) 9.51 / 19.47 and 9.71 / 19.03 -> 2.00x (2.05x,
1.96x), memory 0.92 (1,077 GFLOP/s): on 16 short rows compiling gains nothing, so it stays off.
float32 (`--threads 1`), 3 Dec 2026 later, same Xeon and code, one round: alignlab 13.66 s/step (generation 5.74 s
with float32 sampling weights, update 6.10 s), 3.96 GB; TRL 18.84, 4.53 GB -> 1.38x, memory 0.87 (bf16 matmul 446
GFLOP/s at the start).
3 Dec 2026, last run, same Xeon, `--threads 1 --bf16 --rounds 2` (no change on GRPO's path: its answers' spans keep the float32
whole-span backward), bf16 matmul peak 1,262 GFLOP/s at the start: 5.07 / 12.29 and 5.05 / 11.80 s/step -> 2.38x
(rounds 2.42x, 2.34x), memory 0.89 (3.96 GB against 4.46); float32 (`--threads 1`, one round, peak 1,326 at the
start): 9.55 against 13.68 s/step -> 1.43x, memory 0.87 (3.96 GB against 4.55). Issue 14's 2.5x is not reached.
3 Dec afternoon, `--threads 1 --bf16 --rounds 2` with kept bf16 weight casts in the RL update too (bf16 matmul peak 1,204):
5.51 / 11.85 and 5.19 / 12.20 s/step -> 2.25x (2.15x, 2.35x), memory 0.93 (4.1 GB against 4.4); a paired in-process
A/B (4 steps x 3 interleaved runs) put the update 3-8% slower with them (one micro-batch per optimizer step: nothing
to save, copies held), so RL does not use them (models/kept_casts.py).
3 Dec evening, same Xeon, `--threads 1 --bf16 --rounds 2`. After a tied head's gradient went to its embedding call
and the [V, H] gradient block was reused across steps (ops/embedding.py, ops/buffers.py), peak 1,348 at the start:
4.99 / 11.41 and 4.72 / 11.53 s/step -> 2.36x (2.29x, 2.44x), memory 0.91 (generation 2.0 s, update 2.3 s). With the
lean Llama forward in the bf16 sampler (rollout/decode_step.py: transformers' Llama ops without its module calls,
the same logits bit for bit; a hand-written step tried before, above, saved 4% of a longer step and was not kept):
4.47 / 11.27 and 4.58 / 11.55 s/step -> **2.52x** (rounds 2.52x, 2.52x), memory 0.92 (4.05 GB against 4.40),
generation 1.96-2.0 s, update 2.1-2.2 s, the same rewards (0.916 -> 0.917) as before the change; peak 1,506 at the
start. A run between the two (the first round before the change, the second after) gave 2.45x (2.40x, 2.50x).
Issue 14's bf16 2.5x is met in this run. float32 (`--threads 1`, one round, the final code; float32 sampling does not
take the lean forward), peak 1,321 at the start: 9.62 against 15.09 s/step -> 1.57x (1.43x before), memory 0.89
(4.04 GB against 4.56): float32's 2.5x is not met.
3 Dec night, same Xeon, `--threads 1 --bf16 --rounds 2`, after the sampler's Llama step went to fused calls (one
q/k/v product, residual adds and SwiGLU as oneDNN post-ops, bf16 attention on AMX) and the two-level inverse-CDF
draw, peak 1,376 at the start: 4.48 / 11.11 and 4.48 / 11.31 s/step -> **2.50x** (2.48x, 2.52x), memory 0.91; rewards
0.916 -> 0.912 (the sampler's numbers changed by bf16 rounding). A separate run's split: generation 1.82-1.86 s a
step (of which ~0.3 s making the bf16 copies and packing them for the new weights), update 1.9-2.5 s. Again on the
final code, peak 1,550 at the start: 4.31 / 11.31 and 4.38 / 11.18 s/step -> **2.59x** (2.63x, 2.56x), memory 0.91.
float32 (`--threads 1`, one round, final code; float32 sampling does not take the Llama step), peak 1,446 at the
start: 9.14 against 13.68 s/step -> 1.50x, memory 0.89 (4.06 GB against 4.59).
4 Dec, just after midnight, same Xeon, same code, `--threads 1 --bf16-sampling --rounds 2` (float32 training, our
sampler in bf16 with rollout_is tis; TRL samples in float32), bf16 matmul peak 1,481 and float32 197 GFLOP/s at the
start: 6.65 / 14.09 and 7.07 / 13.75 s/step -> **2.03x** (2.12x, 1.94x), memory 0.90 (4.08 GB against 4.53);
generation 1.85-1.93 s a step, update 3.79-4.08 s. What float32's 2.5x would take: a float32 step of alignlab's
(`--threads 1`, one in-process run) splits into generation ~4.0 s, update 3.6-3.9 s and ~1 s of rollout bookkeeping
and the frozen reference's forward. The update's ~540 tokens (4 short prompts once, ~500 answer tokens; 6N FLOPs
each, N = 134.5M) are ~436 GFLOP: 112-121 GFLOP/s, ~60% of the float32 matmul peak (197); the reference's forward is
~145 GFLOP more. 2.5x TRL's 13.7-14.1 s/step is 5.5-5.6 s a step; after bf16 sampling's 1.9 s that leaves ~3.6 s,
in which update, reference and bookkeeping would have to run at ~82% of the float32 peak (2.95 s of products at
100%). Not reached; bf16 products for a float32 run (as TF32 does on GPUs) would change its arithmetic.
4 Dec morning, same Xeon, after the RL training row was padded to a multiple of 16 tokens (rl/config.py
`pad_to_multiple_of`) and the policy took the lean norm/SwiGLU blocks and shared bf16 input casts (models/), `make
bench-grpo` with `--rounds 2`: bf16 (peak 1,594 GFLOP/s at the start) 4.60 / 11.12 and 4.50 / 11.25 s/step -> 2.46x
(rounds 2.42x, 2.50x), memory 0.88 (3.9 GB against 4.4-4.5); float32 (peak 1,455) 8.84 / 13.75 and 9.58 / 13.59 ->
1.49x (1.55x, 1.42x), memory 0.92; float32 with bf16 sampling (peak 1,277, load 1.2) 7.71 / 14.57 and 8.13 / 14.82
-> 1.86x (1.89x, 1.82x), memory 0.92. Paired runs of alignlab's side alone, 8 steps, separate processes alternating:
bf16, the lean blocks and shared casts against neither (padding off in both; the same rewards, as the same bits
require): 31.5 and 29.7 s against 30.5 and 30.3, peak 4.00 and 3.99 GB against 4.14 and 4.10; float32 with bf16
sampling, all three changes against none: 46.1 and 48.1 s against 46.3 and 48.1. So the speed of these runs moved
with the machine (TRL's float32 side 14.6-14.8 s/step here against 13.7-14.1 the night before), not with the code.
bf16 again half an hour later (peak 1,449): 4.45 / 11.04 and 4.43 / 11.41 s/step -> 2.53x (2.48x, 2.57x), memory
0.88. With down's input recomputed too (models/lean_blocks.py), peak 1,483: 4.47 / 11.36 and 4.48 / 11.39 s/step ->
2.54x (2.54x, 2.54x), memory 0.87 (3.8 GB against 4.4), the same rewards. bf16's 2.5x: met in four of five runs
(2.59x, 2.50x, 2.46x, 2.53x, 2.54x).
The same final code on an AMD EPYC (family 25 model 17, AVX512-BF16, no AMX; 2 CPUs), 4 Dec afternoon, 1 thread, `make
bench-grpo` with `--rounds 2`, bf16 matmul peak 210 GFLOP/s at the start (half 2 Dec's EPYC): bf16 6.59 / 13.31 and
7.26 / 14.28 s/step -> 1.99x (2.02x, 1.97x), memory 0.86 (3.8 GB against 4.3-4.4; generation 2.1-2.4 s, update
3.5-3.8 s); float32 11.93 / 17.16 and 11.67 / 17.72 -> 1.48x (1.44x, 1.52x), memory 0.91; float32 with bf16 sampling
10.16 / 18.73 and 10.15 / 18.12 -> 1.81x (1.84x, 1.79x), memory 0.92. A bf16 product runs here at about a seventh of
the Xeon's rate, so matrix products, which alignlab does not make cheaper, are a larger part of both sides' steps
(60% of alignlab's DPO step on this machine: bench/dpo_vs_trl.py) and the ratio is lower than on the Xeon.
The same EPYC and code, 4 Dec, 16:22 UTC, load 0.1, bf16 matmul peak 183 at the start, `--bf16 --rounds 2`: 8.54 / 17.23
and 7.18 / 15.89 s/step -> 2.11x (2.02x, 2.21x), memory 0.86 (3.79-3.80 GB against 4.41-4.42), rewards 0.922 -> 0.883
(TRL 0.924 -> 0.886). Issue 14's 2.5x is not reached on this CPU.
The same EPYC, 4 Dec 18:00 UTC, after the changes of that evening (one-row pair batches, the bf16 reference's own
float32 copies, no dense mask with a span plan; none changes this job's numbers), load 0.8, peak 211, `--bf16
--rounds 2`: 6.49 / 12.74 and 6.43 / 12.22 s/step -> 1.93x (1.96x, 1.90x), memory 0.86 (3.78-3.82 GB against
4.39-4.43), same rewards. Both sides ran faster than at 16:22 (TRL 12.2-12.7 s against 15.9-17.2). Where alignlab's
step goes (in-process, 5 steps): sampling 2.0 s, the update 3.3 s, the reference's forward and the rest ~0.9 s; a
torch profile of the update puts 68% of it in aten::mm at ~190 GFLOP/s (the measured peak: 200-217), so the update is
at this machine's matmul rate, and 2.5x of TRL's 12.5 s (5.0 s) is more than sampling could give back.

Each side now reports its useful GFLOP/s and `share_of_peak` (see `flops`: 10N per token of the step's prompts once
and answers, N = 134.5M for SmolLM2; sampling's 2N taken at the sampling dtype's peak, the rest at the training
dtype's: `peak_of`), and the JSON line `speedup_at_peak` = speedup / alignlab's share: the ratio alignlab would
reach against the same TRL run doing every useful FLOP at the measured peak, the ceiling this machine puts on the
ratio. Same EPYC, 4 Dec 2026 22:30 UTC, one thread, one round each (prompts 8.3 tokens, answers ~509 tokens a step):
float32 (fp32 matmul peak 103 GFLOP/s): alignlab 12.47 s/step (generation 4.81, update 5.76), share 0.57; TRL 15.79,
share 0.45 -> 1.27x, memory 0.90, speedup_at_peak **2.24x**: float32's 2.5x cannot be reached on this CPU at these
FLOPs (729 GFLOP a step: 7.1 s at the peak against the 6.3 s 2.5x needs). bf16 (peak 217): alignlab 6.22 s/step
(generation 2.01, update 3.22), share 0.54; TRL 11.90, share 0.28 -> 1.91x, memory 0.86, speedup_at_peak 3.52x.
Then TRL's KL was made the plain k3 (use_bias_correction_kl=False: TRL 1.16 weights k3 by the ratio by default), 23:42
UTC, bf16: alignlab 6.47 s/step, share 0.52; TRL 12.50, share 0.27 -> 1.93x, memory 0.86, speedup_at_peak 3.74x.

On an AMD EPYC family 25 model 1 (AVX2 only: no AVX512, no bf16 units), 5 Dec 2026, one thread, one round, float32
on both sides (the make target's --bf16-if-fast; bf16 products ran at 2.3 GFLOP/s here against 92 in float32):
alignlab 14.73 s/step (generation 4.61, training 8.13), 4.10 GB; TRL 23.82 s/step, 4.53 GB -> 1.62x, memory 0.91,
share of peak 0.54 / 0.33, speedup_at_peak 3.00; rewards 0.922 -> 0.888 and 0.913 -> 0.896.
The same CPU, 5 Dec 11:15 UTC, one thread, one round, machine otherwise idle, float32: alignlab 13.46 s/step, 4.13
GB; TRL 17.85 s/step, 4.51 GB -> 1.33x, memory 0.92, share of peak 0.59 / 0.45, speedup_at_peak 2.24x; rewards 0.922
-> 0.888 and 0.913 -> 0.896 (as in the morning). alignlab's step ran 9% faster than the morning's, TRL's 33% faster.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from peer import add_shared_args, compare, peak_rss_mb, run_as_worker, step_timer

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def distinct_words(prompts: list, completions: list, **fields) -> list[float]:
    """The reward on both sides: distinct words / words of each completion (0 for an empty one).

    Its signature, reward(prompts, completions, **fields) -> list[float], is both alignlab's Python reward and
    TRL's reward function; completions are plain strings on both sides (plain-text prompts)."""
    out = []
    for text in completions:
        words = str(text).lower().split()
        out.append(len(set(words)) / len(words) if words else 0.0)
    return out


# ---------------------------------------------------------------------------------------------- workers
def alignlab_worker(spec: dict) -> dict:
    """Runs inside alignlab's venv: `alignlab.grpo` on the spec's prompts with distinct_words as the reward."""
    import alignlab
    from alignlab.train.callbacks import Callback

    class StepClock(Callback):
        """Wall and process CPU seconds of each step (from the end of the previous one), peak RSS after the last."""

        def __init__(self):
            self.seconds, self.tokens, self.rewards, self.t0, self.peak = [], [], [], 0.0, 0.0
            self.generation, self.training, self.cpu, self.c0 = [], [], [], 0.0

        def on_train_begin(self, run_dir, total_steps, start_step):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, step, metrics):
            now = time.perf_counter()
            self.seconds.append(now - self.t0)
            self.t0 = now
            cpu = time.process_time()
            self.cpu.append(cpu - self.c0)
            self.c0 = cpu
            self.tokens.append(metrics.get("tokens_per_second", 0.0) * metrics.get("time/generation", 0.0))
            self.rewards.append(metrics["reward_mean"])
            self.generation.append(metrics.get("time/generation", 0.0))
            self.training.append(metrics.get("time/training", 0.0))
            self.peak = peak_rss_mb()

    clock = StepClock()
    alignlab.grpo(
        model=spec["model_dir"], data=[{"prompt": p} for p in spec["prompts"]], reward=distinct_words,
        callbacks=[clock], output_dir=spec["out"] + "/alignlab", max_steps=spec["steps"],
        batch_size=spec["prompts_per_step"], num_generations=spec["num_generations"],
        max_new_tokens=spec["max_new_tokens"], temperature=1.0, top_p=1.0, kl_coef=spec["beta"],
        kl_estimator="k3", learning_rate=spec["lr"], lr_scheduler="constant", seed=spec["seed"], eval_prompts=0,
        eval_split=0.0, logging_steps=1, save_steps=0, resume="never", progress="none", cpu_threads=spec["threads"],
        device="cpu", bf16=spec["bf16"], compile=spec["compile"], generation_batch_size=spec["prompts_per_step"] * spec["num_generations"],
        # under --bf16 (or --bf16-sampling with float32 training) the sampler decodes with bf16 weights (TRL samples
        # under autocast), and the trainer/sampler mismatch is corrected by truncated importance sampling (from the
        # update's own forward: one optimizer step per rollout)
        **({"sampling_weights": "auto", "rollout_is": "tis"} if spec["bf16"] or spec["bf16_sampling"] else {}),
    )
    return {"step_seconds": clock.seconds, "step_cpu_seconds": clock.cpu, "peak_memory_mb": clock.peak,
            "rewards": clock.rewards, "step_tokens": clock.tokens, "generation_seconds": clock.generation, "training_seconds": clock.training}


def trl_worker(spec: dict) -> dict:
    """Runs inside the TRL venv (no alignlab import): GRPOTrainer on the same prompts and reward."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    data = Dataset.from_list([{"prompt": p} for p in spec["prompts"]])
    rollout = spec["prompts_per_step"] * spec["num_generations"]
    args = trl.GRPOConfig(
        output_dir=spec["out"] + "/trl", max_steps=spec["steps"], per_device_train_batch_size=rollout,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=spec["num_generations"], max_completion_length=spec["max_new_tokens"], temperature=1.0,
        top_p=1.0, top_k=0, beta=spec["beta"], epsilon=0.2, loss_type="dapo", scale_rewards="group",
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        seed=spec["seed"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=spec["bf16"],
        gradient_checkpointing=False, use_vllm=False, dataloader_num_workers=0, disable_tqdm=True,
        log_completions=False, use_bias_correction_kl=False,  # plain k3 as alignlab's (TRL 1.16 weights it by the ratio)
    )

    class CpuAndPeak(TrainerCallback):
        """Process CPU seconds of each step and the peak RSS after the last (step_timer has the wall seconds)."""

        def __init__(self):
            self.mb, self.cpu, self.c0 = 0.0, [], 0.0

        def on_step_begin(self, *a, **k):
            self.c0 = time.process_time()

        def on_step_end(self, *a, **k):
            self.cpu.append(time.process_time() - self.c0)
            self.mb = peak_rss_mb()

    timer, peak = step_timer(), CpuAndPeak()
    trainer = trl.GRPOTrainer(model=model, reward_funcs=distinct_words, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[timer, peak])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "reward" in r]
    lengths = [r.get("completions/mean_length", 0.0) * rollout for r in logs]
    return {"step_seconds": timer.seconds, "step_cpu_seconds": peak.cpu, "peak_memory_mb": peak.mb, "rewards": [r["reward"] for r in logs],
            "step_tokens": lengths, "trl_version": trl.__version__}


# ---------------------------------------------------------------------------------------------- driver


def summarize(res: dict) -> dict:
    """Seconds per step over steps 2..n (the first pays one-off costs; with one step it is all there is)."""
    timed = res["step_seconds"][1:] or res["step_seconds"]
    cpu = res["step_cpu_seconds"][1:] or res["step_cpu_seconds"]
    tokens = res["step_tokens"][1:] or res["step_tokens"]
    out = {"seconds_per_step": round(sum(timed) / len(timed), 3), "seconds": round(sum(timed), 3),
           "timed_steps": len(timed), "timed_tokens": round(sum(tokens), 1),
           "steps_per_second": round(len(timed) / sum(timed), 5),
           "cpu_seconds_per_step": round(sum(cpu) / len(cpu), 3),
           "first_step_seconds": round(res["step_seconds"][0], 3),
           "tokens_per_step": round(sum(res["step_tokens"]) / max(len(res["step_tokens"]), 1), 1),
           "peak_memory_mb": round(res["peak_memory_mb"], 1),
           "first_reward": round(res["rewards"][0], 4), "final_reward": round(res["rewards"][-1], 4)}
    for key in ("generation_seconds", "training_seconds"):  # alignlab's own split of a step (same steps)
        if key in res:
            part = res[key][1:] or res[key]
            out[key.replace("_seconds", "_seconds_per_step")] = round(sum(part) / len(part), 3)
    if "trl_version" in res:
        out["trl_version"] = res["trl_version"]
    return out


def flops(res: dict, n: int, prompt_tokens: float, beta: float) -> tuple[float, None]:
    """Useful FLOPs of a side's timed steps (bench/hardware.py's count: 2N a token a forward, 6N a trained token;
    N = the parameters in matmuls). A step samples its G answer tokens after one prefill of its P prompt tokens
    (2N each), then trains the prompt-shared layout, each prompt once and every answer (6N per token) and runs the
    frozen reference over it (2N per token, when beta > 0): 2N(P + G) + (6N + 2N)(P + G). The same count for both
    sides (each with its own G); what each side really runs (TRL's padding, its prompt once per answer) is not
    counted."""
    per_token = 2 * n + 6 * n + (2 * n if beta > 0 else 0)
    return per_token * (prompt_tokens * res["timed_steps"] + res["timed_tokens"]), None


def peak_of(side: str, machine: dict, spec: dict) -> float:
    """The matmul peak a side's useful FLOPs are taken of: sampling (2N of every 10N, 8N without a reference) at the
    sampling dtype's peak, the rest at the training dtype's. alignlab samples in bf16 under --bf16 and
    --bf16-sampling; TRL samples in its training dtype."""
    rates = machine["peak_matmul"]
    train = rates["bf16_gflops" if spec["bf16"] else "fp32_gflops"]
    sample = rates["bf16_gflops"] if spec["bf16"] or (side == "alignlab" and spec["bf16_sampling"]) else train
    share = 2 / (10 if spec["beta"] > 0 else 8)
    return 1 / (share / sample + (1 - share) / train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or local HF directory (both sides)")
    p.add_argument("--steps", type=int, default=4, help="RL steps (the first is warm-up, not timed)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the group size)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest completion (TRL max_completion_length)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (alignlab kl_coef, TRL beta)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16-sampling", action="store_true",
                   help="float32 training on alignlab's side with bf16 sampling weights and rollout_is tis (implied by "
                        "--bf16); TRL samples with its float32 model")
    add_shared_args(p)
    return p


def make_spec(args: argparse.Namespace, out: Path) -> dict:
    """What both workers read: the model directory, the prompts as plain strings and the job's numbers."""
    from transformers import AutoTokenizer

    from alignlab.data.builtin import sentiment_prompts
    from alignlab.models.load import resolve_model

    model_dir = str(resolve_model(args.model))
    prompts = sentiment_prompts(args.steps * args.prompts, args.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return {"model_dir": model_dir, "prompts": prompts,
            "step_prompt_tokens": round(args.prompts * sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts), 1),
            "out": str(out), "steps": args.steps, "prompts_per_step": args.prompts,
            "num_generations": args.num_generations, "max_new_tokens": args.max_new_tokens, "beta": args.beta,
            "lr": args.lr, "seed": args.seed, "threads": args.threads, "bf16": args.bf16,
            "bf16_sampling": args.bf16_sampling, "compile": args.compile}


def main(argv: list[str] | None = None) -> None:
    from hardware import load_config, matmul_params

    args = build_parser().parse_args(argv)
    if run_as_worker(args, {"alignlab": alignlab_worker, "trl": trl_worker}):
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    spec = make_spec(args, out)
    job = {k: spec[k] for k in ("steps", "prompts_per_step", "num_generations", "max_new_tokens", "beta", "lr",
                                "threads", "bf16", "bf16_sampling", "compile")}
    n = matmul_params(load_config(spec["model_dir"]))
    compare(HERE, args, spec, out, summarize, rate="steps_per_second",
            job={"model": args.model, "matmul_params": n, "prompt_tokens_per_step": spec["step_prompt_tokens"], **job},
            flops=lambda r: flops(r, n, spec["step_prompt_tokens"], spec["beta"]),
            peak=lambda side, machine: peak_of(side, machine, spec),
            describe=lambda r: f"{r['seconds_per_step']:>8.2f} s/step ({r['cpu_seconds_per_step']:.2f} CPU s)  peak {r['peak_memory_mb']:,.0f} MB  "
                               f"{r['tokens_per_step']:.0f} tokens/step  "
                               f"reward {r['first_reward']:.3f} -> {r['final_reward']:.3f}")


if __name__ == "__main__":
    main()
