"""files.write_text_atomic: a crash mid-write leaves the previous file, not an empty or half one."""

from pathlib import Path

import pytest

from alignlab.files import write_text_atomic


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    # config.yaml was written in place: a kill between the truncation and the write left it empty, and the next
    # launch of the same command was refused as a changed config (every key listed)
    path = write_text_atomic(tmp_path / "run" / "config.yaml", "seed: 1\n")
    assert path.read_text() == "seed: 1\n" and list(path.parent.iterdir()) == [path]
    real = Path.write_text

    def dies(self, text, *a, **k):
        real(self, text[:3], *a, **k)  # half of it on disk, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", dies)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "seed: 2\n")
    monkeypatch.undo()
    assert path.read_text() == "seed: 1\n"
