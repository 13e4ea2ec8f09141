"""Distillation and pretraining keys that could only give wrong numbers are refused before any work."""

from types import SimpleNamespace

import pytest

from alignlab.config import ConfigError, from_dict
from alignlab.errors import AlignlabError
from alignlab.models.load import load_tokenizer
from alignlab.models.tokenizer import train_bpe_tokenizer
from alignlab.recipes.pretrain import PretrainConfig
from alignlab.rl.config import DistillConfig
from alignlab.rl.teacher import _check_same_tokens


def test_a_teacher_with_another_tokenizer_of_the_same_size_is_refused(tmp_path):
    # only the sizes were compared: a 512-token BPE trained on other text (262 ids shared) was distilled from
    student = load_tokenizer("tiny-random")
    other = train_bpe_tokenizer(["To be, or not to be, that is the question."] * 50 + ["the king is dead"] * 50,
                                vocab_size=len(student))
    other.save_pretrained(tmp_path / "teacher")
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=len(student)).save_pretrained(tmp_path / "teacher")  # a model folder's config
    with pytest.raises(AlignlabError, match="tokenizer maps .* of the student's .* tokens to other ids"):
        _check_same_tokens(SimpleNamespace(teacher=str(tmp_path / "teacher")), SimpleNamespace(tokenizer=student))
    _check_same_tokens(SimpleNamespace(teacher="tiny-random"), SimpleNamespace(tokenizer=student))  # the same one


def test_keys_the_recipes_cannot_honour():
    # the sampled reverse-KL estimate needs tokens from the whole softmax (top_p 0.2 biased it by +0.21 nats)
    with pytest.raises(ConfigError, match="top_p: kl_estimator sampled"):
        from_dict(DistillConfig, {"teacher": "tiny-random", "kl_estimator": "sampled", "top_p": 0.5})
    # a byte-level BPE cannot be smaller than its alphabet (100 gave 260), and a given tokenizer has its own size
    with pytest.raises(ConfigError, match="vocab_size: 100: .* at least its 256 bytes"):
        from_dict(PretrainConfig, {"vocab_size": 100, "data": "x.txt"})
    with pytest.raises(ConfigError, match="vocab_size: 4000: set only when pretrain trains the tokenizer"):
        from_dict(PretrainConfig, {"tokenizer": "tiny-random", "vocab_size": 4000, "data": "x.txt"})
