"""Same reward-model job through alignlab and through TRL's RewardTrainer; prints pairs/s, peak memory and the ratios.

    .venv/bin/python bench/rm_vs_trl.py --threads 1 --bf16       # SmolLM2-135M-Instruct, TruthfulQA pairs
    .venv/bin/python bench/rm_vs_trl.py --threads 1 --bf16 --data demo   # LLaMA-Factory demo pairs (long prompts)
    .venv/bin/python bench/rm_vs_trl.py --forward-path plain ...  # alignlab on padded rows too (isolates the layout)

The job: the same model directory (a new scalar head on SmolLM2, full fine-tuning, float32 weights), the same pairs
(steps x batch_size records, written once as TRL conversational prompt/chosen/rejected JSONL and read by both), batch
size (pairs per optimizer step, no accumulation), Bradley-Terry loss without margin or centring, learning rate
(constant, no warmup), max_length (no pair here reaches it), seed, torch thread count, gradient checkpointing (on by
default: TRL's RewardConfig default) and precision (`--bf16`: bf16 autocast on both, TRL's default). Each side runs in
its own process (peak RSS its own); TRL in its own virtual environment (bench/peer.py), never a dependency of alignlab.
alignlab scores every pair in one padding-free row with the prompt once (`forward_path: prefix`, its default); TRL
pads chosen and rejected rows to the batch's longest and runs the prompt in each. Both score the sequence at its last
token; the chat template's tokens differ by one (TRL keeps the newline after `<|im_end|>`, alignlab scores at it), so
pairs/s is the rate compared, and `positions` (what each side's model embedded over the run) shows the layouts' work.

Pairs/s = pairs over the seconds of optimizer steps 2..n (the first pays one-off costs). The last line is one JSON
object: {"job", "machine", "alignlab": {...}, "trl": {...}, "speedup", "memory_ratio"} (bench/peer.py `compare`).

Measured on the 2-core AMD EPYC (`lscpu` "AMD EPYC", family 25 model 17, AVX512-BF16, no AMX), 4 Dec 2026, one torch
thread per side, bf16, full checkpointing on both, TRL 1.16.0, SmolLM2-135M-Instruct, bf16 matmul peak 213-217
GFLOP/s at the starts:
  TruthfulQA (6 steps x 8 pairs of ~55 tokens), `--rounds 2`: 2.338 / 1.153 and 2.243 / 1.168 pairs/s -> 1.97x
      (rounds 2.03x, 1.92x), memory 1.02 (2.96 GB against 2.90: alignlab keeps a step's bf16 weight casts under
      checkpointing, models/kept_casts.py); positions embedded 3,152 against 6,592.
  LLaMA-Factory demo pairs (`--data demo --batch-size 4 --steps 5`: long multi-turn prompts, pairs of 300-1,400
      tokens), one round: 0.135 against 0.052 pairs/s -> 2.60x, memory 0.68 (4.86 GB against 7.15); positions
      18,320 against 44,152. (With max_length 1,024 TRL dropped the three longest pairs and alignlab cut their
      prompts: 1.56x on jobs that were no longer the same, hence the default of 2,048.)
alignlab's own padded rows (`alignlab rm forward_path=plain`, LoRA, 1 thread, float32) ran the TruthfulQA job at 1.02
pairs/s against 2.53 with the prefix-shared row (recipes/reward.py), so the layout is most of the difference.
"""

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
DATA = Path(os.environ.get("ALIGNLAB_DATA", ROOT.parent / "shared" / "data"))
SOURCES = {  # name -> (file under ALIGNLAB_DATA, column mapping for a table in no preference format)
    "truthfulqa": ("truthfulqa/TruthfulQA.csv",
                   {"prompt": "Question", "chosen": "Best Answer", "rejected": "Incorrect Answers[0]"}),
    "demo": ("llamafactory_demo/dpo_en_demo.json", None),
}


# ---------------------------------------------------------------------------------------------- workers
def alignlab_worker(spec: dict) -> dict:
    """Runs inside alignlab's venv: `alignlab rm` on the shared JSONL, timings from metrics.jsonl."""
    from alignlab.recipes.reward import RewardConfig, run

    cfg = RewardConfig(
        model=spec["model_dir"], data=spec["data"], output_dir=spec["out"] + "/alignlab", eval_split=0.0,
        max_steps=spec["steps"], batch_size=spec["batch_size"], grad_accum=1, max_length=spec["max_length"],
        learning_rate=spec["lr"], lr_scheduler="constant", warmup_steps=0, seed=spec["seed"], logging_steps=1,
        save_steps=0, resume="never", progress="none", cpu_threads=spec["threads"], device="cpu",
        bf16=spec["bf16"], compile=spec["compile"], forward_path=spec["forward_path"], use_margin=False,
        gradient_checkpointing={"off": False, "on": True, "selective": "selective"}[spec["gradient_checkpointing"]],
    )
    run(cfg)
    rows, tokens, seconds = logged_steps(cfg.output_dir)
    return {"step_seconds": seconds, "peak_memory_mb": peak_rss_mb(), "final_loss": rows[-1]["loss"]}


def trl_worker(spec: dict) -> dict:
    """Runs inside the TRL venv (no alignlab import): RewardTrainer on the same JSONL."""
    import torch
    import trl
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])  # the new head's initial weights
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    data = load_dataset("json", data_files=spec["data"], split="train")
    args = trl.RewardConfig(
        output_dir=spec["out"] + "/trl", max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        max_length=spec["max_length"], seed=spec["seed"], logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=spec["bf16"], dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=spec["gradient_checkpointing"] != "off",  # TRL has only full checkpointing
    )
    timer = step_timer()
    trainer = in_order(trl.RewardTrainer, spec["order"])(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {"step_seconds": timer.seconds[: spec["steps"]], "peak_memory_mb": peak_rss_mb(),
            "final_loss": logs[-1]["loss"], "trl_version": trl.__version__}


# ---------------------------------------------------------------------------------------------- driver
def write_pairs(source: str, n: int, out: Path) -> Path:
    """The first n pairs as TRL conversational prompt/chosen/rejected JSONL (both sides read this file)."""
    from alignlab.data.sources import load_rows

    path, columns = SOURCES[source]
    rows = load_rows(DATA / path, task="preference", columns=columns).rows[:n]
    if len(rows) < n:
        raise SystemExit(f"{DATA / path} has {len(rows)} pairs; the job needs {n}")
    pairs = out / "pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    return pairs


def summarize(res: dict, batch_size: int) -> dict:
    """Pairs/s over steps 2..n (the first step pays one-off costs)."""
    timed = res["step_seconds"][1:]
    return {"pairs_per_second": round(batch_size * len(timed) / sum(timed), 3), "seconds": round(sum(timed), 2),
            "first_step_seconds": round(res["step_seconds"][0], 2), "peak_memory_mb": round(res["peak_memory_mb"], 1),
            "final_loss": round(res["final_loss"], 4), "torch_threads": res["torch_threads"],
            # positions the model embedded over the whole run, padding and repeated prompts included
            "positions": res["embedded_tokens"]["trained"],
            **({"trl_version": res["trl_version"]} if "trl_version" in res else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", choices=sorted(SOURCES), default="truthfulqa")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=2048,
                   help="above every pair of both datasets (the longest demo pair is 1,398 tokens): TRL drops a longer "
                        "pair where alignlab cuts its prompt, which would make the jobs differ")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--forward-path", choices=["prefix", "plain"], default="prefix",
                   help="alignlab's layout: prefix (its default) or plain (padded rows, as TRL)")
    p.add_argument("--gradient-checkpointing", choices=["on", "off", "selective"], default="on",
                   help="on or off: the same on both sides (TRL's RewardConfig default is on); selective: alignlab's "
                        "selective recomputation against TRL's full")
    add_shared_args(p)
    args = p.parse_args()
    if run_as_worker(args, {"alignlab": alignlab_worker, "trl": trl_worker}):
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from alignlab.models.load import resolve_model

    out = Path(tempfile.mkdtemp(prefix="bench-rm-"))
    spec = {"model_dir": resolve_model(args.model), "data": str(write_pairs(args.data, args.steps * args.batch_size, out)),
            "out": str(out), "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "seed": args.seed, "threads": args.threads, "bf16": args.bf16,
            "forward_path": args.forward_path, "gradient_checkpointing": args.gradient_checkpointing,
            "compile": args.compile}
    spec["order"] = alignlab_order(args.steps * args.batch_size, args.seed)  # TRL visits the pairs in alignlab's order
    job = {"model": args.model, "data": args.data, **{k: spec[k] for k in (
        "steps", "batch_size", "max_length", "threads", "bf16", "forward_path", "gradient_checkpointing", "compile")}}
    compare(HERE, args, spec, out, lambda res: summarize(res, args.batch_size), rate="pairs_per_second", job=job,
            describe=lambda r: f"{r['pairs_per_second']:>7.3f} pairs/s  peak {r['peak_memory_mb']:,.0f} MB"
                               f"  final loss {r['final_loss']:.4f}")


if __name__ == "__main__":
    main()
