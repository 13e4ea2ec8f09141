"""Writing a file so that a crash (kill -9, a full disk) leaves the previous one or the new one, never half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`text` to `path` through a temporary file beside it and a rename (config.yaml written in place was left empty
    by a kill, and the next launch was refused as a changed config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
