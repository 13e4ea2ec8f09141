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
