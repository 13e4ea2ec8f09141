"""CLI: `alignlab generate` (sample completions, report tokens/s) and `alignlab best-of-n` (sample N per
prompt, score them with a reward, write a preference or SFT dataset). Heavy imports stay inside functions."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alignlab.cli import command
from alignlab.errors import AlignlabError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model alias (tiny-random, smollm2-135m-instruct), local HF dir or hub id")
    p.add_argument("--prompts", metavar="FILE", help="prompt file (jsonl/json/parquet; any format alignlab "
                   "reads: prompt-only, TRL prompt/completion, messages, GSM8K question/answer, ...)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of the file (records "
                   "after them are not read)")
    _data_args(p)
    p.add_argument("--n", type=int, default=None, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature/top-p/top-k)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="sequences decoded together")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--out", metavar="FILE.jsonl", help="write the results here (atomically)")


def _data_args(p: argparse.ArgumentParser) -> None:
    """How a prompt file is read: the same keys as training data (only the prompt fields are checked)."""
    p.add_argument("--columns", default=None, metavar="MAPPING", help="column mapping for a table in no known "
                   "format, e.g. 'prompt=Question,answer=Best Answer' (see `alignlab data inspect --help`)")
    p.add_argument("--data-format", default=None, metavar="FORMAT", help="skip format detection (sharegpt, "
                   "messages, preference, prompt-completion, prompt-only, alpaca, question-answer, hh)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="a record whose prompt is unusable stops the command (error) or is skipped and counted")


def _generate_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt given inline (repeatable); sent as a user message through the chat template")
    p.add_argument("--raw", action="store_true", help="send --prompt texts as plain text, without chat template")
    p.add_argument("--json-schema", metavar="FILE", help="constrain every completion to JSON valid under the "
                   "JSON schema in FILE (needs the extra 'structured': llguidance)")
    p.add_argument("--regex", help="constrain every completion to match this regular expression (llguidance)")
    p.add_argument("--weights-dtype", choices=("model", "auto", "float32", "bfloat16"), default="model",
                   help="weights to sample with: as loaded, bf16 where the hardware has bf16 units (auto), ...")
    p.add_argument("--beams", type=int, default=None, metavar="N",
                   help="beam search with N beams over the model's log-probs (for a DPO policy: search on the "
                        "implicit reward, Rafailov et al. 2024); one completion per prompt, 1 = greedy")
    p.add_argument("--search", choices=("mcts",), default=None,
                   help="MCTS on the implicit reward beta*log(pi/pi_ref) of MODEL (a DPO policy) against --ref "
                        "(Rafailov et al. 2024); one completion per prompt, --budget model calls per prompt")
    p.add_argument("--ref", default=None, help="--search: the reference model the policy was trained against")
    p.add_argument("--beta", type=float, default=None, help="--search: the policy's DPO beta (default 0.1)")
    p.add_argument("--budget", type=int, default=None, help="--search: model calls per prompt (default 96)")
    p.add_argument("--search-top-k", type=int, default=None, help="--search: children per expanded node (default 4)")
    from alignlab.rollout.speculative import add_speculative_args

    add_speculative_args(p)


def _best_of_n_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--reward", required=True, help="sentiment | gsm8k | format | reward_model | module.path:fn")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the reward (e.g. path=CKPT for reward_model, pattern=REGEX for format)")
    p.add_argument("--mode", choices=("preference", "sft"), default="preference",
                   help="preference: best vs worst as chosen/rejected; sft: keep the top --keep samples")
    p.add_argument("--keep", type=int, default=1, help="sft mode: samples kept per prompt")
    p.add_argument("--min-margin", type=float, default=0.0, help="preference: skip pairs whose reward gap is at most this (0 drops ties)")
    p.add_argument("--min-reward", type=float, default=None, help="sft: drop samples scoring below this")
    p.add_argument("--drop-truncated", action="store_true", help="leave out samples cut at --max-new-tokens (sft "
                   "and dpo train an end-of-sequence token after every completion; kept by default, and counted)")


def _sampling(args: argparse.Namespace):
    from alignlab.rollout.generate import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         top_k=args.top_k, greedy=args.greedy, stop=list(args.stop), seed=args.seed,
                         batch_size=args.batch_size, weights_dtype=getattr(args, "weights_dtype", "model"),
                         json_schema=_schema_file(getattr(args, "json_schema", None)),
                         regex=getattr(args, "regex", None))
    cfg.validate()
    return cfg


def _schema_file(path: str | None) -> dict | None:
    import json
    from pathlib import Path

    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise AlignlabError(f"generate: cannot read --json-schema {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise AlignlabError(f"generate: --json-schema {path} is not JSON: line {e.lineno}: {e.msg}") from None
    if not isinstance(schema, dict):
        raise AlignlabError(f"generate: --json-schema {path} must hold a JSON object (a schema)")
    return schema


def _load(args: argparse.Namespace):
    from alignlab.models.load import load_model, load_tokenizer

    return load_model(args.model, device=args.device), load_tokenizer(args.model)


def _file_prompts(args: argparse.Namespace) -> list[Any]:
    from alignlab.data.prompts import load_prompt_rows

    return load_prompt_rows(args.prompts, columns=args.columns, data_format=args.data_format,
                            on_bad_row=args.on_bad_row, limit=args.limit)


def _report(res) -> None:
    from collections import Counter

    reasons = Counter(s.finish_reason for s in res.samples)
    finish = ", ".join(f"{k} {reasons[k]}" for k in ("eos", "stop", "length") if reasons[k])
    print(f"generated {res.num_tokens} tokens in {len(res.samples)} completions in {res.seconds:.2f} s: "
          f"{res.tokens_per_second:.1f} tokens/s (finish: {finish})", file=sys.stderr)


@command("generate", "Sample completions with alignlab's batched KV-cache sampler; prints tokens/s.",
         _generate_args)
def run_generate(args: argparse.Namespace) -> int:
    from alignlab.rollout.generate import generate
    from alignlab.rollout.sampling import prompt_messages, write_jsonl

    if bool(args.prompts) == bool(args.prompt):
        raise AlignlabError("generate: give either --prompts FILE or one or more --prompt TEXT")
    other = [flag for flag, given in (("--raw", args.raw), ("--limit", args.limit is not None),
                                      ("--columns", args.columns is not None), ("--on-bad-row", args.on_bad_row != "error"),
                                      ("--data-format", args.data_format is not None))
             if given and (flag == "--raw") == bool(args.prompts)]
    if other:  # accepted and ignored: --raw with a file, the file's own flags with inline prompts
        raise AlignlabError(f"generate: {', '.join(other)} apply to {'--prompt' if args.prompts else '--prompts'} only")
    cfg = _sampling(args)
    if args.prompts:
        prompts = _file_prompts(args)
    else:
        prompts = list(args.prompt) if args.raw else [[{"role": "user", "content": t}] for t in args.prompt]
    if sum(x is not None for x in (args.beams, args.search, args.speculative)) > 1:
        raise AlignlabError("generate: --beams, --search and --speculative exclude one another")
    from alignlab.rollout.speculative import decoding_from_args

    decoding = decoding_from_args(args, "generate")
    _refuse_unused_flags(args)
    model, tok = _load(args)
    if args.beams is not None:
        return _run_beams(args, model, tok, prompts)
    if args.search is not None:
        from alignlab.rollout.search import run_search_command

        return run_search_command(args, model, tok, prompts)
    if args.speculative is not None:
        from alignlab.rollout.speculative import medusa_from_flag

        res = medusa_from_flag(args.speculative, model, tok, prompts, cfg, n=args.n, decoding=decoding)
    else:
        res = generate(model, tok, prompts, cfg, n=1 if args.n is None else args.n)
    records = []
    for s in res.samples:
        msgs, chat = prompt_messages(prompts[s.prompt_index])
        prompt = msgs if chat else "".join(m["content"] for m in msgs)
        completion = [{"role": "assistant", "content": s.text}] if chat else s.text
        records.append({"prompt": prompt, "completion": completion, "finish_reason": s.finish_reason,
                        "num_tokens": len(s.completion_ids), "prompt_index": s.prompt_index,
                        "sample_index": s.sample_index})
    if args.out:
        write_jsonl(args.out, records)
        print(f"wrote {len(records)} completions to {args.out}", file=sys.stderr)
    else:
        for s in res.samples:
            print(f"--- prompt {s.prompt_index} sample {s.sample_index} ({s.finish_reason})\n{s.text}")
    _report(res)
    return 0


def _refuse_unused_flags(args: argparse.Namespace) -> None:
    """Beam search and MCTS decode deterministically over the model's own log-probs: sampling settings given with
    them would be silently ignored (an MCTS answer printed unconstrained under --regex), so they are refused; so
    are the search's own flags without --search."""
    if args.beams is not None or args.search is not None:
        sampling = [flag for flag, given in (
            ("--temperature", args.temperature != 1.0), ("--top-p", args.top_p != 1.0), ("--top-k", args.top_k != 0),
            ("--greedy", args.greedy), ("--stop", args.stop), ("--seed", args.seed != 0),
            ("--batch-size", args.batch_size != 64), ("--weights-dtype", args.weights_dtype != "model"),
            ("--json-schema", args.json_schema is not None), ("--regex", args.regex is not None)) if given]
        if sampling:
            mode = "--beams" if args.beams is not None else "--search"
            raise AlignlabError(f"generate: {mode} does not apply {', '.join(sampling)} (sampling settings); drop "
                                "them, or sample instead")
    if args.search is None:
        search = [flag for flag, value in (("--ref", args.ref), ("--beta", args.beta), ("--budget", args.budget),
                                           ("--search-top-k", args.search_top_k)) if value is not None]
        if search:
            raise AlignlabError(f"generate: {', '.join(search)} apply to --search only")


def _run_beams(args: argparse.Namespace, model: Any, tok: Any, prompts: list[Any]) -> int:
    from alignlab.rollout.beam import BeamConfig, beam_search
    from alignlab.rollout.sampling import prompt_messages, write_jsonl

    if args.n not in (None, 1):
        raise AlignlabError("generate: --beams returns one completion per prompt; drop --n")
    hyps = beam_search(model, tok, prompts, BeamConfig(num_beams=args.beams, max_new_tokens=args.max_new_tokens))
    records = []
    for i, h in enumerate(hyps):
        msgs, chat = prompt_messages(prompts[i])
        records.append({"prompt": msgs if chat else "".join(m["content"] for m in msgs),
                        "completion": [{"role": "assistant", "content": h.text}] if chat else h.text,
                        "finish_reason": h.finish_reason, "num_tokens": len(h.completion_ids),
                        "logp": h.logp, "prompt_index": i, "sample_index": 0})
    if args.out:
        write_jsonl(args.out, records)
        print(f"wrote {len(records)} beam-search completions to {args.out}", file=sys.stderr)
    else:
        for r in records:
            text = r["completion"][0]["content"] if isinstance(r["completion"], list) else r["completion"]
            print(f"--- prompt {r['prompt_index']} (beam {args.beams}, {r['finish_reason']}, logp {r['logp']:.3f})\n{text}")
    return 0


def _reward_options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    opts = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AlignlabError(f"best-of-n: --reward-arg must be KEY=VALUE, got {item!r}")
        opts[key] = yaml.safe_load(value) if value else ""
    return opts


@command("best-of-n", "Sample N completions per prompt, score them with a reward, write a preference "
         "(best vs worst) or SFT (top-k) dataset that `alignlab dpo` / `alignlab sft` read as it is.",
         _best_of_n_args)
def run_best_of_n(args: argparse.Namespace) -> int:
    from alignlab.rollout.rewards import get_reward
    from alignlab.rollout.sampling import build_records, sample_and_score, write_jsonl

    if not args.prompts or not args.out:
        raise AlignlabError("best-of-n: --prompts FILE and --out FILE.jsonl are required")
    if not args.min_margin >= 0:  # before sampling: the records would refuse it only after
        raise AlignlabError(f"best-of-n: --min-margin must be >= 0, got {args.min_margin}")
    unused = {"preference": ["--keep"] * (args.keep != 1) + ["--min-reward"] * (args.min_reward is not None),
              "sft": ["--min-margin"] * (args.min_margin != 0.0)}[args.mode]
    if unused:  # the other mode's flags were accepted and ignored
        raise AlignlabError(f"best-of-n: {', '.join(unused)} do nothing under --mode {args.mode}")
    cfg = _sampling(args)
    reward = get_reward(args.reward, **_reward_options(args.reward_arg))
    prompts = _file_prompts(args)
    model, tok = _load(args)
    n = 4 if args.n is None else args.n  # 0 reaches sample_and_score's own check
    res = sample_and_score(model, tok, prompts, reward, n, cfg)
    records = build_records(res, args.mode, keep=args.keep, min_margin=args.min_margin,
                            min_reward=args.min_reward, drop_truncated=args.drop_truncated)
    cut = sum(s.finish_reason == "length" for s in res.generation.samples)
    if not records:
        raise AlignlabError(f"best-of-n: no {args.mode} records survived (left out: {res.dropped}); "
                            "try more samples (--n) or a higher temperature")
    write_jsonl(args.out, records)
    rewards = [r for g in res.groups for r in g.rewards]
    print(f"wrote {len(records)} {args.mode} records from {len(prompts)} prompts to {args.out} "
          f"(reward mean {sum(rewards) / len(rewards):.4f}, best-of-{n} mean "
          f"{sum(max(g.rewards) for g in res.groups) / len(res.groups):.4f}; left out: {res.dropped or 'none'})",
          file=sys.stderr)
    if cut and not args.drop_truncated:
        print(f"{cut} of {len(res.generation.samples)} samples were cut at --max-new-tokens {args.max_new_tokens} "
              "and may be in the records as finished answers (--drop-truncated leaves them out)", file=sys.stderr)
    _report(res.generation)
    return 0
