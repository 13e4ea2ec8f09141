"""Shared by the TRL parity tests: one torch thread (the numbers do not depend on it; the run time does) and the
SmolLM2 tokenizer both libraries tokenise with."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    from alignlab.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session", autouse=True)
def scratch_under_pytest(tmp_path_factory):
    """TRL's output_dir and the saved tiny models (tempfile.mkdtemp() in the tests) go under pytest's own temporary
    folder, which pytest prunes: in /tmp they were left behind, ~1 GB a run."""
    import tempfile

    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("trl-scratch"))
    yield
    tempfile.tempdir = before
