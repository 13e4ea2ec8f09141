"""train/world.py: a batch that does not split over the ranks is refused before any model loads."""

import pytest

from alignlab.errors import AlignlabError
from alignlab.train.world import World


@pytest.fixture
def two_ranks(monkeypatch):
    import alignlab.models.load as load

    monkeypatch.setattr(World, "from_env", classmethod(lambda cls, device="auto": cls(rank=0, size=2, device="cpu")))

    def no_loading(*a, **k):
        raise AssertionError("a model loaded before the batch was checked")

    monkeypatch.setattr(load, "load_model", no_loading)


@pytest.mark.parametrize("command", ["sft", "dpo", "grpo"])
def test_a_batch_that_does_not_split_over_the_ranks_stops_before_loading(two_ranks, tmp_path, command):
    # each rank loaded the model, tokenized the data and (dpo, reference: cache) ran the reference pass first
    import alignlab

    data = [{"prompt": "p", "completion": "c", "chosen": "a", "rejected": "b"}] if command != "grpo" else None
    kwargs = {"data": data} if data else {}
    with pytest.raises(AlignlabError, match="batch_size .*3.* multiple of"):
        getattr(alignlab, command)(model="tiny-random", batch_size=3, output_dir=str(tmp_path), **kwargs)
