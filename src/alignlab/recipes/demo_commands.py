"""CLI registration for `alignlab demo`, `alignlab experiment frontier` and `alignlab explain` (light imports)."""

from __future__ import annotations

from alignlab.cli import command, config_command
from alignlab.recipes.demo import DemoConfig


def _demo(cfg: DemoConfig) -> None:
    from alignlab.recipes.demo import run

    run(cfg)


config_command(
    "demo",
    "The DPO paper's sentiment task end to end on CPU: sample pairs from SmolLM2, LoRA-DPO, evaluate, report.html.",
    DemoConfig,
    _demo,
)


def _explain_configure(p) -> None:
    p.add_argument("model", help="trained policy: a LoRA adapter folder (its base, adapter off, is the default "
                   "reference), a model folder or an alias")
    p.add_argument("--ref", default=None, help="reference model (needed when MODEL is not a LoRA adapter)")
    p.add_argument("--data", default=None, help="jsonl/json of completions: preference rows (chosen and rejected "
                   "are both explained) or prompt/completion or messages rows")
    p.add_argument("--prompt", default=None, help="one prompt (plain text) instead of --data")
    p.add_argument("--completion", default=None, help="its completion (plain text; EOS is appended)")
    p.add_argument("--beta", type=float, default=0.1, help="the DPO beta the policy was trained with (default 0.1)")
    p.add_argument("--max-length", type=int, default=None, help="the max_length the policy was trained with: rows "
                   "are cut as training cut them (default: scored whole)")
    p.add_argument("--limit", type=int, default=8, help="explain at most this many rows of --data (default 8); "
                   "records after them are not read")
    p.add_argument("--columns", default=None, metavar="MAPPING", help="column mapping for a table in no known "
                   "format, e.g. 'prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[0]'")
    p.add_argument("--data-format", default=None, metavar="FORMAT", help="skip format detection of --data")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="a bad record of --data stops explain (error) or is skipped and counted")
    p.add_argument("--html", default=None, help="also write the heat-map as an HTML page here")


def _examples(args, tokenizer) -> tuple[list[str], list[list[int]], list[list[int]], list[list[bool]]]:
    """(labels, prompt ids, completion ids, trained flags) tokenised exactly as training tokenised them
    (data.tokenize; cut at --max-length, as training cut them, when given); a multi-turn row's completion runs from
    its first trained token to the end, and only the tokens training scores (its assistant turns) are flagged."""
    from alignlab.data.rows import PreferenceRow, SFTRow
    from alignlab.data.sources import load_rows
    from alignlab.data.tokenize import tokenize_pair, tokenize_sft
    from alignlab.errors import AlignlabError

    if args.max_length is not None and args.max_length < 2:
        raise AlignlabError(f"explain: --max-length must be >= 2, got {args.max_length}")
    if (args.limit is not None and args.limit < 1) or (args.data and (args.prompt is not None
                                                                       or args.completion is not None)):
        raise AlignlabError("explain: --limit must be >= 1, and --data goes without --prompt/--completion (they were "
                            "ignored)")
    if args.data:
        res = load_rows(args.data, format=args.data_format, columns=args.columns, on_bad_row=args.on_bad_row,
                        limit=args.limit)
        if res.skipped:
            print(f"{args.data}: skipped bad records {dict(res.skipped)}")
        rows = res.rows
    elif args.prompt is not None and args.completion is not None:
        rows = [SFTRow([{"role": "user", "content": args.prompt}, {"role": "assistant", "content": args.completion}],
                       num_prompt=1, chat=False)]
    else:
        raise AlignlabError("explain: give --data FILE, or --prompt and --completion")
    labels, prompts, comps, trained = [], [], [], []
    for i, row in enumerate(rows):
        if isinstance(row, PreferenceRow):
            pair = tokenize_pair(row, tokenizer, args.max_length)
            for name, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
                labels.append(f"row {i} {name}"), prompts.append(pair.prompt_ids), comps.append(ids)
                trained.append([True] * len(ids))
        elif isinstance(row, SFTRow):
            ex = tokenize_sft(row, tokenizer, args.max_length)
            first = next((k for k, lab in enumerate(ex.labels) if lab != -100), len(ex.input_ids))
            labels.append(f"row {i}"), prompts.append(ex.input_ids[:first]), comps.append(ex.input_ids[first:])
            trained.append([lab != -100 for lab in ex.labels[first:]])
        else:
            raise AlignlabError(f"explain: {args.data} row {i}: need preference or prompt/completion rows, "
                                f"got {type(row).__name__}")
    return labels, prompts, comps, trained


def _explain(args) -> None:
    from pathlib import Path

    from rich.console import Console

    from alignlab.errors import AlignlabError
    from alignlab.eval.credit import implicit_rewards, render_html, render_rich
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.train.reference import build_reference, resolve_reference_kind

    tokenizer = load_tokenizer(args.model)
    policy = load_model(args.model)
    kind = resolve_reference_kind("model" if args.ref else "auto", policy)
    if kind == "model" and not args.ref:
        raise AlignlabError(f"explain: {args.model} is not a LoRA adapter, so it has no built-in reference; "
                            "give --ref REF (e.g. the model it was trained from)")
    reference = build_reference(policy, kind, source=args.ref)
    labels, prompts, comps, trained = _examples(args, tokenizer)
    credits = implicit_rewards(policy, tokenizer, prompts, comps, beta=args.beta, reference=reference, trained=trained)
    heads = [f"[{lab}] {tokenizer.decode(p, skip_special_tokens=True)}" for lab, p in zip(labels, prompts)]
    render_rich(credits, heads, Console())
    if args.html:
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>alignlab explain</title></head><body>"
                f"<h1>Per-token implicit reward, beta {args.beta}</h1>{render_html(credits, heads)}</body></html>")
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(page, encoding="utf-8")
        print(f"wrote {args.html}")


command("explain", "Per-token implicit reward beta*log(pi/pi_ref) of given completions (terminal colours, HTML).",
        _explain_configure)(_explain)


def _frontier(cfg) -> None:
    from alignlab.recipes.frontier import run

    run(cfg)


def _register_frontier() -> None:
    from alignlab.recipes.frontier import FrontierConfig

    config_command(
        "experiment frontier",
        "The DPO paper's reward-vs-KL frontier at CPU scale: sweep DPO beta, PPO/GRPO KL coefficient, best-of-N's N; "
        "points.json (resumable) and frontier.png.",
        FrontierConfig,
        _frontier,
    )


_register_frontier()
