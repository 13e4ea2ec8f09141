"""`alignlab data inspect PATH`: what a file holds and what training would make of it; `alignlab data convert
IN OUT`: any file (a table through `--columns`) rewritten in TRL's standard format.

Prints the detected format and task, the usable rows, problems by kind with their first locations,
rows dropped on purpose (ties), and token-length statistics when `--tokenizer` is given. `--json`
prints one JSON object instead (keys: path, format, task, rows, records, skipped, dropped, notes,
problems, tokens). The whole file is always checked; with the default `--on-bad-row error` the exit
status is 2 when any row is bad (training would stop), with `--on-bad-row skip` it is 0. A `.txt` file, or
records holding only `text`, are pretraining text (what `alignlab pretrain` reads): characters, lines and,
with `--tokenizer`, tokens are reported.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from typing import Any

from alignlab.cli import command
from alignlab.errors import AlignlabError

_TASKS = ("sft", "preference", "unpaired", "prompt")


_EPILOG = """column mappings (--columns FIELD=COLUMN,...; quote the whole argument):
  prompt=A+B        prompt from columns A and B (non-empty cells joined by a blank line); also system=
  chosen=C,rejected=R               a preference pair
  completion=C [,label=L]           sft (or unpaired with a true/false label column)
  responses=R1+R2,votes=V1+V2+V3    pair by majority vote: a vote is 1/2 (a/b) for a response,
                                    0/tie/empty for a tie; ties are dropped and counted
  answer=A                          reference answer for prompt rows
  COL[N] / COL[*]   element N / one row per element of a list cell (JSON array, or text split on
                    list_sep, default ';'); text is split only when a selector asks, and a JSON
                    array without a selector is reported, never joined
  list_sep=S, chat=false            options
examples:
  alignlab data inspect TruthfulQA.csv --columns 'prompt=Question,chosen=Best Answer,rejected=Incorrect Answers[0]'
  alignlab data inspect testset-v1.json --columns 'prompt=instruction+input,responses=response1+response2,\
votes=annotator1+annotator2+annotator3'
"""


def _configure(p: argparse.ArgumentParser) -> None:
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("path", help="file (.jsonl .json .gz .parquet .csv .tsv), datasets save folder, or hub id")
    p.add_argument("--format", help="skip detection: sharegpt, messages, preference, prompt-completion, unpaired, "
                   "prompt-only, alpaca, question-answer, hh, ranked")
    p.add_argument("--task", choices=_TASKS, help="convert rows to this task (default: the format's own)")
    p.add_argument("--columns", help="column mapping, e.g. 'prompt=Question,chosen=Best Answer,"
                   "rejected=Incorrect Answers[0]' (see alignlab.data.mapping)")
    p.add_argument("--tokenizer", help="tokenizer (HF dir, hub id or alias) for token-length statistics")
    p.add_argument("--max-length", type=int, help="with --tokenizer: count rows truncation would cut")
    p.add_argument("--sample", type=int, default=2000, help="rows tokenised for statistics (default 2000)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error (default): exit 2 when any row is bad; skip: report and exit 0")
    p.add_argument("--show", type=int, default=3, help="locations listed per problem kind (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def problem_summary(problems: list, show: int) -> dict[str, dict[str, Any]]:
    """kind -> {count, first: [problem dicts]}"""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "first": []})
    for p in problems:
        entry = out[p.kind]
        entry["count"] += 1
        if len(entry["first"]) < show:
            entry["first"].append(p.to_dict())
    return dict(out)


def _load_tokenizer(name: str) -> Any:
    """A tokenizer folder is read as it is; model names and aliases go through alignlab.models.load."""
    from pathlib import Path

    from alignlab.data.chat import ensure_chat_template

    try:
        if Path(name).is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name)
        else:
            from alignlab.models.load import load_tokenizer

            tok = load_tokenizer(name)
    except AlignlabError:
        raise
    except Exception as e:  # transformers raises OSError / ValueError / HF errors for a bad name
        raise AlignlabError(f"cannot load tokenizer {name!r}: {type(e).__name__}: {e}") from None
    return ensure_chat_template(tok)


def _lengths(row: Any, task: str, tok: Any, max_length: int | None) -> tuple[dict[str, int], Any]:
    """Token counts before truncation (kept + cut) and the tokenised example (for truncation counts)."""
    from alignlab.data import tokenize as T

    if task == "sft":
        t = T.tokenize_sft(row, tok, max_length)
        trained = sum(1 for lab in t.labels if lab != T.IGNORE)
        # untruncated: a cut chat row also loses the template's text after its last trained token, in no cut count
        whole = t if max_length is None else T.tokenize_sft(row, tok, None)
        return {"total": len(whole.input_ids), "trained": trained}, t
    if task == "preference":
        t = T.tokenize_pair(row, tok, max_length)
        p, c, r = len(t.prompt_ids) + t.prompt_cut, len(t.chosen_ids) + t.chosen_cut, len(t.rejected_ids) + t.rejected_cut
        return {"prompt": p, "chosen": c, "rejected": r, "total": p + max(c, r)}, t
    if task == "unpaired":
        t = T.tokenize_unpaired(row, tok, max_length)
        p, c = len(t.prompt_ids) + t.prompt_cut, len(t.completion_ids) + t.completion_cut
        return {"prompt": p, "completion": c, "total": p + c}, t
    return {"prompt": len(T.tokenize_prompt(row, tok))}, None


def token_stats(rows: list, task: str, tok: Any, sample: int, max_length: int | None) -> dict[str, Any]:
    """min / mean / p50 / p95 / max of each length (before truncation) over the first `sample` rows, and
    with `max_length` what truncation would cut. For sft, `trained` counts trained tokens after truncation."""
    from alignlab.data.tokenize import truncation_stats

    per: dict[str, list[int]] = defaultdict(list)
    done = []
    for row in rows[:sample]:
        lengths, t = _lengths(row, task, tok, max_length)
        for k, v in lengths.items():
            per[k].append(v)
        if t is not None:
            done.append(t)
    out: dict[str, Any] = {"rows_measured": len(rows[:sample])}
    for k, vals in per.items():
        vals.sort()
        out[k] = {"min": vals[0], "mean": round(statistics.fmean(vals), 1), "p50": vals[len(vals) // 2],
                  "p95": vals[min(len(vals) - 1, int(0.95 * len(vals)))], "max": vals[-1]}
    if max_length is not None and done:
        out["truncation"] = truncation_stats(done)
    return out


def _print_report(rep: dict[str, Any]) -> None:
    print(f"{rep['path']}: format {rep['format']}, task {rep['task']}")
    print(f"  usable rows: {rep['rows']} (records read: {rep['records']})")
    for title, key in (("skipped (bad rows)", "skipped"), ("dropped on purpose", "dropped"), ("notes", "notes")):
        if rep[key]:
            print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in rep[key].items()))
    for kind, entry in rep["problems"].items():
        print(f"  problem {kind}: {entry['count']}")
        for p in entry["first"]:
            where = p["file"] + (f":{p['line']}" if p["line"] is not None else "")
            where += f" (record {p['index']})" if p["index"] is not None else ""
            field = f" field '{p['field']}'" if p["field"] else ""
            print(f"    {where}{field}: {p['message']}")
    if rep.get("tokens"):
        tokens = rep["tokens"]
        print(f"  tokens over {tokens['rows_measured']} rows:")
        for k, s in tokens.items():
            if isinstance(s, dict) and "min" in s:
                print(f"    {k:<10} min {s['min']:>6}  mean {s['mean']:>8}  p50 {s['p50']:>6}  "
                      f"p95 {s['p95']:>6}  max {s['max']:>6}")
        if "truncation" in tokens:
            print("    truncation: " + ", ".join(f"{k} {v}" for k, v in tokens["truncation"].items()))


def _text_only(path: str) -> list[str] | None:
    """The documents of a pretraining corpus (data/corpus.py: what `alignlab pretrain` reads), else None."""
    from alignlab.data.corpus import corpus_texts

    return corpus_texts(path)


def _text_report(path: str, texts: list[str], args: argparse.Namespace) -> int:
    rep: dict[str, Any] = {"path": str(path), "format": "text", "task": "pretrain", "documents": len(texts),
                           "characters": sum(len(t) for t in texts), "lines": sum(len(t.splitlines()) for t in texts)}
    if args.tokenizer:
        tok = _load_tokenizer(args.tokenizer)
        backend = getattr(tok, "backend_tokenizer", None)
        rep["tokens"] = sum(len(backend.encode(t, add_special_tokens=False).ids) if backend is not None
                            else len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    if args.json:
        print(json.dumps(rep, ensure_ascii=False))
    else:
        extra = f", {rep['tokens']} tokens" if "tokens" in rep else ""
        print(f"{path}: pretraining text (what `alignlab pretrain` reads): {rep['documents']} document(s), "
              f"{rep['characters']} characters, {rep['lines']} lines{extra}")
    return 0


def _ranked(path: str, data_format: str | None, columns: Any) -> bool:
    """A ranked-list file (prompt + completions, best first: what `alignlab rm` reads): read as prompt-only
    before, its completions unchecked (inspect) or dropped (convert)."""
    from pathlib import Path

    from alignlab.data.ranked import is_ranked_file

    return (data_format == "ranked" or Path(path).is_file()) and is_ranked_file(path, data_format, columns)


def _ranked_report(args: argparse.Namespace) -> int:
    """What `alignlab rm` makes of a ranked-list file; a bad record stops it (exit 2) as it stops training."""
    from alignlab.data.ranked import load_ranked

    rows = load_ranked(args.path, args.on_bad_row)
    rep = {"path": str(args.path), "format": "ranked", "task": "reward (ranked lists)", "rows": len(rows),
           "completions": sum(len(r.completions) for r in rows)}
    print(json.dumps(rep, ensure_ascii=False) if args.json else
          f"{args.path}: format ranked (what `alignlab rm` reads), {rep['rows']} usable lists of "
          f"{rep['completions']} completions")
    return 0


@command("data inspect", "detected format and task, usable rows, problems, token lengths", _configure)
def inspect_cmd(args: argparse.Namespace) -> int:
    from alignlab.data.sources import load_rows

    if args.sample < 1 or (args.max_length is not None and args.max_length < 1):  # sliced rows[:-1], or cut all
        raise AlignlabError(f"--sample and --max-length must be >= 1, got {args.sample} and {args.max_length}")
    texts = _text_only(args.path) if not (args.format or args.task or args.columns) else None
    if texts is not None:
        return _text_report(args.path, texts, args)
    if args.task is None and _ranked(args.path, args.format, args.columns):
        return _ranked_report(args)

    res = load_rows(args.path, task=args.task, format=args.format, columns=args.columns, on_bad_row="skip")
    rep: dict[str, Any] = {
        "path": str(args.path), "format": res.format, "task": res.task, "rows": len(res.rows),
        "records": res.records, "skipped": res.skipped, "dropped": res.dropped, "notes": res.notes,
        "problems": problem_summary(res.problems, args.show), "tokens": None,
    }
    if args.tokenizer:
        rep["tokens"] = token_stats(res.rows, res.task, _load_tokenizer(args.tokenizer), args.sample,
                                    args.max_length)
    if args.json:
        print(json.dumps(rep, ensure_ascii=False))
    else:
        _print_report(rep)
    if res.problems and args.on_bad_row == "error":
        print(f"alignlab data inspect: {len(res.problems)} problem(s); training with on_bad_row=error would stop "
              "(pass --on-bad-row skip to drop the bad rows)", file=sys.stderr)
        return 2
    return 0


def _convert_configure(p: argparse.ArgumentParser) -> None:
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("input", help="file (.jsonl .json .gz .parquet .csv .tsv), datasets save folder, or hub id")
    p.add_argument("output", help="the .jsonl file to write (TRL standard/conversational format)")
    p.add_argument("--columns", help="column mapping, e.g. 'prompt=Question,chosen=Best Answer,"
                   "rejected=Incorrect Answers[0]'")
    p.add_argument("--format", help="skip detection of the input format")
    p.add_argument("--task", choices=_TASKS, help="convert rows to this task (default: the format's own)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error (default): a bad record stops with nothing written; skip: leave it out and count it")


@command("data convert", "rewrite a file (a table through --columns) in TRL's standard format", _convert_configure)
def convert_cmd(args: argparse.Namespace) -> int:
    from alignlab.data.convert import to_records, write_records
    from alignlab.data.rows import validate_row
    from alignlab.data.sources import load_rows

    if _ranked(args.input, args.format, args.columns):
        raise AlignlabError(f"{args.input}: ranked lists (a prompt and its completions, best first) are read by "
                            "`alignlab rm` as they are; TRL's formats hold pairs, so there is nothing to convert to")
    res = load_rows(args.input, task=args.task, format=args.format, columns=args.columns,
                    on_bad_row=args.on_bad_row)
    # a judged pair may keep an empty response (its votes still say which is better); a file of pairs read back
    # would reject it, so it is left out and counted
    rows = [r for r in res.rows if not validate_row(r)]
    empty = len(res.rows) - len(rows)
    if not rows:
        raise AlignlabError(f"{args.input}: no usable rows to convert")
    write_records(args.output, to_records(rows))
    left = f"; left out {empty} with an empty response" if empty else ""
    left += f"; skipped {res.skipped}" if res.skipped else ""
    left += f"; dropped {res.dropped}" if res.dropped else ""
    print(f"wrote {len(rows)} {res.task} rows ({res.format} -> TRL format) to {args.output}{left}",
          file=sys.stderr)
    return 0


def _transcripts_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="GSM8K-style JSONL: a question field and a solution whose calculations are "
                                 "annotated <<expression=value>>, ending '#### answer'")
    p.add_argument("output", help="the .jsonl file of conversations to write (TRL `messages` format)")
    p.add_argument("--max-turns", type=int, default=4, help="leave out solutions needing more assistant turns "
                   "(tool calls + the answer) than this: the env's max_turns (default 4)")
    p.add_argument("--limit", type=int, default=0, help="write at most this many conversations (0: all)")
    p.add_argument("--no-tool-share", type=float, default=0.0, help="write this share of the solutions (chosen by "
                   "--seed) without tool calls, the arithmetic done in the text: the warm-up then leaves to RL "
                   "when the tool pays (default 0: every solution with an annotated calculation calls it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of solutions --no-tool-share writes "
                   "without the tool (default 0)")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")


@command("data tool-transcripts", "GSM8K solutions as calculator tool-call conversations (SFT warm-up for "
         "grpo env=calculator)", _transcripts_configure)
def transcripts_cmd(args: argparse.Namespace) -> int:
    from alignlab.data.convert import write_records
    from alignlab.data.readers import read_records
    from alignlab.rl.envs.calculator import gsm8k_transcript

    if not 0.0 <= args.no_tool_share <= 1.0:
        raise AlignlabError(f"--no-tool-share must be between 0 and 1, got {args.no_tool_share}")
    if args.limit < 0 or args.max_turns < 1:  # a negative limit was truthy: one conversation written
        raise AlignlabError(f"--limit must be >= 0 (0: all) and --max-turns >= 1, got {args.limit} and {args.max_turns}")
    read = read_records(args.input)
    if read.problems:
        raise AlignlabError(f"{read.problems[0].location()}: {read.problems[0].message}")
    rng = random.Random(args.seed)
    out, left_out, plain = [], 0, 0
    for r in read.records:
        rec = r.value if isinstance(r.value, dict) else {}
        missing = [f for f in (args.question_field, args.answer_field) if not isinstance(rec.get(f), str)]
        if missing:
            raise AlignlabError(f"{args.input}: record {r.index} (line {r.line}): no text field {missing[0]!r}")
        tool = rng.random() >= args.no_tool_share
        messages = gsm8k_transcript(rec[args.question_field], rec[args.answer_field], args.max_turns, tool=tool)
        if messages is None:
            left_out += 1
        else:
            out.append({"messages": messages})
            plain += not any(m["role"] == "tool" for m in messages)  # drawn plain, or no annotated calculation
        if args.limit and len(out) >= args.limit:
            break
    if not out:
        raise AlignlabError(f"{args.input}: no record gave a transcript (annotated calculations within "
                            f"{args.max_turns} turns)")
    write_records(args.output, out)
    print(f"wrote {len(out)} conversations ({plain} without tool calls) to {args.output}; left out {left_out} "
          f"(more than {args.max_turns} turns, or a calculation the calculator does not reproduce)", file=sys.stderr)
    return 0
