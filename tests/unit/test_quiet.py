"""Issue 15 item 10: the expected third-party noise is silenced, anything unexpected still shows."""

import logging
import warnings
from pathlib import Path

from alignlab.quiet import is_expected_load_report, quiet_expected_noise

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HEAD_ONLY = ("\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: /cache/tiny\nKey          | Status  | \n"
             "-------------+---------+-\nscore.weight | MISSING | \n\nNotes:\n- MISSING:\tthose params were newly "
             "initialized because missing from the checkpoint.")
LAYER_MISSING = HEAD_ONLY.replace("score.weight | MISSING | ", "score.weight | MISSING | \nmodel.norm.weight | MISSING | ")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_load_reports_only_expected_rows_are_dropped():
    assert is_expected_load_report(HEAD_ONLY)
    assert not is_expected_load_report(LAYER_MISSING)
    assert not is_expected_load_report("some other warning")


def test_filters_drop_expected_records_and_keep_the_rest():
    quiet_expected_noise()
    quiet_expected_noise()  # idempotent
    seen = Collect()
    for name in ("transformers.modeling_utils", "transformers.tokenization_utils_base"):
        logging.getLogger(name).addHandler(seen)
    try:
        logging.getLogger("transformers.modeling_utils").warning(HEAD_ONLY)
        logging.getLogger("transformers.modeling_utils").warning(LAYER_MISSING)
        logging.getLogger("transformers.tokenization_utils_base").warning(
            "Token indices sequence length is longer than the specified maximum sequence length for this model "
            "(1068 > 1024). Running this sequence through the model will result in indexing errors")
        logging.getLogger("transformers.tokenization_utils_base").warning("a tokenizer problem nobody expected")
    finally:
        for name in ("transformers.modeling_utils", "transformers.tokenization_utils_base"):
            logging.getLogger(name).removeHandler(seen)
    assert seen.messages == [LAYER_MISSING, "a tokenizer problem nobody expected"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_expected_noise()  # re-adds its filter in front of the test's "default"
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_a_reward_model_run_prints_no_expected_noise(data_dir, tmp_path, capfd):
    from alignlab.cli import main

    data = data_dir / "llamafactory_demo" / "dpo_en_demo.json"
    assert main(["rm", "--config", str(CONFIGS / "rm_tiny.yaml"), f"data={data}", f"output_dir={tmp_path}",
                 "max_steps=1", "progress=none", "max_eval_rows=4"]) == 0
    err = capfd.readouterr().err
    for noise in ("LOAD REPORT", "Token indices sequence length", "Loading weights", "FutureWarning"):
        assert noise not in err, err[-2000:]
