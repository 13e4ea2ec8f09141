"""A plain-text corpus for pretraining: read and split by position, encoded, cut into blocks."""

from __future__ import annotations

from pathlib import Path

from alignlab.errors import AlignlabError


def blocks(ids: list[int], length: int) -> list[dict[str, list[int]]]:
    """Non-overlapping windows of `length` tokens; every token is a label (first is never predicted)."""
    return [{"input_ids": ids[i: i + length], "labels": ids[i: i + length]}
            for i in range(0, len(ids) - length + 1, length)]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a whole corpus (the fast backend directly: no max-length warning, no special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def corpus_texts(path: str | Path) -> list[str] | None:
    """The documents of a pretraining corpus: a UTF-8 .txt file (one document), or a file of records that hold
    only `text` (JSONL/JSON/parquet, as c4-style corpora ship); None for any other file."""
    from alignlab.data.readers import read_records
    from alignlab.data.rows import Origin

    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".txt":
        try:
            return [p.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise AlignlabError(f"{p}: not UTF-8 text (byte {e.start})") from None
    read = read_records(p)
    values = [r.value for r in read.records]
    good = [isinstance(v, dict) and set(v) == {"text"} and isinstance(v["text"], str) for v in values]
    if values and not all(good) and 2 * sum(good) > len(values):  # a text corpus with a few bad records: say which
        bad = [r for r, ok in zip(read.records, good) if not ok]
        shown = "".join(f"\n  {Origin(str(p), r.index, r.line)}: {_not_text(r.value)}" for r in bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise AlignlabError(f"{p}: {len(bad)} of its {len(values)} records are not a text corpus's {{'text': "
                            f"string}}:{shown}{more}")
    if values and all(good):
        if read.problems:  # a broken line would drop its document without a word
            shown = "".join(f"\n  {q}" for q in read.problems[:5])
            more = f"\n  ... and {len(read.problems) - 5} more" if len(read.problems) > 5 else ""
            raise AlignlabError(f"{p}: {len(read.problems)} record(s) of this text corpus cannot be read; fix or "
                                f"remove them:{shown}{more}")
        return [v["text"] for v in values]
    return None


def _not_text(value: object) -> str:
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    if "text" not in value:
        return "field 'text' is missing"
    if not isinstance(value["text"], str):
        return f"field 'text': expected a string, got {type(value['text']).__name__}"
    return f"field(s) {', '.join(repr(k) for k in value if k != 'text')}: a corpus record holds only 'text'"


def read_corpus(path: str, val_fraction: float) -> tuple[str, str]:
    """(training text, validation text): the corpus's documents joined by blank lines, the last `val_fraction`
    of it held out, cut at a line break (else a space) within 1% of the text before the exact cut."""
    p = Path(path)
    if not p.is_file():
        raise AlignlabError(f"data: corpus file not found: {p}")
    texts = corpus_texts(p)
    if texts is None:
        raise AlignlabError(f"{p}: not a text corpus: give a UTF-8 .txt file, or records that hold only 'text'")
    text = "\n\n".join(texts)
    cut = int(len(text) * (1 - val_fraction))
    # No word split across the two parts, and the share held out the one asked for: the last line break before
    # the cut held out 15.6% of a corpus of long paragraph lines for val_fraction 0.05.
    near = max(0, cut - max(1, len(text) // 100))
    for sep in ("\n", " "):
        if (at := text.rfind(sep, near, cut)) >= 0:
            cut = at + 1
            break
    return text[:cut], text[cut:]


def corpus_split(path: str, val_fraction: float, train_text: str, val_text: str) -> dict:
    """What split.json records of read_corpus's split: the file and its sha256 (a resume refuses an edited corpus),
    the fraction held out and the characters on each side of the cut."""
    from alignlab.data.prepare import file_sha256

    return {"data": str(path), "sha256": file_sha256(path), "val_fraction": val_fraction,
            "held_out": "the text's last val_fraction, cut at a line break or space within 1%",
            "train_chars": len(train_text), "held_out_chars": len(val_text)}
