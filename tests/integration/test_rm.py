"""`alignlab rm` end to end: a learnable preference reaches high held-out accuracy, the saved scorer (full or
LoRA-merged) reloads with `load_scorer` and reproduces the run's own final evaluation, ranked lists train
with Plackett-Luce, bad data stops with the file and line; the slow test trains SmolLM2 on real pairs.

Fast tests use `tiny-random` (2-layer Llama, 512-token BPE) on hand-made data where the better answer
contains the word "please" (or more of them, for lists): a fact a scorer can pick up in a few dozen steps.
"""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignlab.cli import main
from alignlab.config import load_config
from alignlab.data.ranked import RewardCollator
from alignlab.models.heads import load_scorer
from alignlab.models.load import load_tokenizer
from alignlab.recipes.reward import RewardConfig, load_split, tokenize_rows
from alignlab.train.loop import evaluate
from alignlab.train.metrics import read_metrics
from alignlab.train.reward import RewardStep

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["model=tiny-random", "progress=none", "cpu_threads=1", "logging_steps=5", "resume=never",
        "eval_split=0.2", "batch_size=8"]
WORDS = "the cat dog sat on mat ran far away home big small red blue tree house water".split()


def marker_pairs(path: Path, n: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(6)]
            at = rng.randrange(7)
            chosen = " ".join(words[:at] + ["please"] + words[at:])
            rejected = " ".join(rng.choice(WORDS) for _ in range(7))
            f.write(json.dumps({"prompt": f"Tell me about the {rng.choice(WORDS)}.", "chosen": chosen,
                                "rejected": rejected}) + "\n")
    return path


def marker_lists(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Best has two markers, the middle one, the worst none (so the order is learnable, not just the top)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            comps = []
            for markers in (2, 1, 0):
                words = [rng.choice(WORDS) for _ in range(7 - markers)]
                for _ in range(markers):
                    words.insert(rng.randrange(len(words) + 1), "please")
                comps.append(" ".join(words))
            f.write(json.dumps({"prompt": f"Tell me about the {rng.choice(WORDS)}.", "completions": comps}) + "\n")
    return path


def rm(*args: str) -> int:
    return main(["rm", *FAST, *args])


def reevaluate(out: Path, cfg: RewardConfig, scorer) -> dict[str, float]:
    """The held-out examples rebuilt from the saved config (same seeded split) and scored by `scorer`."""
    tok = load_tokenizer(str(out))
    _, _, held = load_split(cfg)
    examples = tokenize_rows(held, tok, cfg, "held-out")
    return evaluate(scorer, RewardStep(cfg.loss, cfg.use_margin, cfg.center_coef), examples,
                    RewardCollator(tok.pad_token_id), batch_size=8, device="cpu")


def final_eval(out: Path) -> dict[str, float]:
    return [r for r in read_metrics(out) if "eval_accuracy" in r][-1]


def test_rm_learns_a_marker_and_the_scorer_reloads(tmp_path):
    data, out = marker_pairs(tmp_path / "pairs.jsonl"), tmp_path / "rm"
    assert rm(f"data={data}", f"output_dir={out}", "max_steps=30", "learning_rate=3e-3") == 0
    evals = [r for r in read_metrics(out) if "eval_accuracy" in r]
    assert [e["step"] for e in evals] == [0, 30]
    assert evals[-1]["eval_accuracy"] >= 0.95  # measured 1.0 (24 held-out pairs)
    assert evals[-1]["eval_margin"] > 2.0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.5
    train_rows = [r for r in read_metrics(out) if "accuracy" in r]
    assert train_rows[-1]["loss"] < 0.1 and {"margin", "chosen_score", "rejected_score"} <= set(train_rows[-1])
    # the checkpoint is a plain HF scorer that reproduces the run's final evaluation exactly
    cfg = load_config(RewardConfig, out / "config.yaml")
    again = reevaluate(out, cfg, load_scorer(str(out)).eval())
    for k in ("eval_loss", "eval_accuracy", "eval_chosen_score", "eval_rejected_score"):
        assert again[k] == pytest.approx(evals[-1][k], abs=1e-5), k
    assert type(AutoModelForSequenceClassification.from_pretrained(out)).__name__ == "LlamaForSequenceClassification"


def test_rm_lora_trains_the_head_and_merges(tmp_path):
    data, out = marker_pairs(tmp_path / "pairs.jsonl"), tmp_path / "rm_lora"
    assert rm(f"data={data}", f"output_dir={out}", "max_steps=30", "learning_rate=1e-2",
              "lora={r: 8, alpha: 16, dropout: 0.0}") == 0
    last = final_eval(out)
    assert last["eval_accuracy"] >= 0.9  # measured 1.0
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"] and adapter["task_type"] == "SEQ_CLS"
    assert not (out / "adapter_config.json").exists()  # output_dir itself is the merged scorer
    cfg = load_config(RewardConfig, out / "config.yaml")
    merged = reevaluate(out, cfg, load_scorer(str(out)).eval())
    assert merged["eval_accuracy"] == last["eval_accuracy"]
    assert merged["eval_chosen_score"] == pytest.approx(last["eval_chosen_score"], abs=1e-4)
    from peft import PeftModel

    torch.manual_seed(1)  # the base head is replaced by the adapter's trained copy, whatever its init
    adapted = PeftModel.from_pretrained(load_scorer("tiny-random"), str(out / "adapter")).eval()
    assert reevaluate(out, cfg, adapted)["eval_loss"] == pytest.approx(merged["eval_loss"], abs=1e-4)


def test_rm_plackett_luce_on_ranked_lists(tmp_path):
    data, out = marker_lists(tmp_path / "lists.jsonl"), tmp_path / "rm_pl"
    assert rm(f"data={data}", f"output_dir={out}", "max_steps=30", "learning_rate=3e-3", "loss=plackett_luce") == 0
    evals = [r for r in read_metrics(out) if "eval_accuracy" in r]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0  # untrained: about log 3! = 1.8
    assert evals[-1]["eval_accuracy"] >= 0.9  # measured 1.0
    # the same lists under bradley_terry become 3 pairs each
    out_bt = tmp_path / "rm_bt"
    assert rm(f"data={data}", f"output_dir={out_bt}", "max_steps=2", "eval_split=0.2") == 0
    cfg = load_config(RewardConfig, out_bt / "config.yaml")
    _, train, held = load_split(cfg)
    assert (len(train), len(held)) == (96 * 3, 24 * 3)


def test_rm_bad_record_names_file_and_line(tmp_path, capsys):
    data = marker_lists(tmp_path / "lists.jsonl", n=5)
    lines = data.read_text().splitlines()
    lines[3] = json.dumps({"prompt": "Q", "completions": ["just one"]})
    data.write_text("\n".join(lines) + "\n")
    assert rm(f"data={data}", f"output_dir={tmp_path / 'x'}", "max_steps=1", "progress=none") == 2
    err = capsys.readouterr().err
    assert "lists.jsonl:4 (record 3): field 'completions'" in err and "at least two" in err


def test_rm_needs_data(capsys):
    assert rm() == 2
    assert "data: give a preference file" in capsys.readouterr().err


@pytest.mark.slow
def test_rm_smollm2_truthfulqa_beats_chance(data_dir, tmp_path):
    """Issue 5 acceptance: configs/rm_smollm2_lora.yaml as shipped (LoRA r=16 + the score head on
    SmolLM2-135M-Instruct, 48 steps x 8 TruthfulQA pairs: best answer over its first incorrect answer), scored
    on 150 held-out questions. Chance is 50%; with 150 pairs, 58% is ~2 standard errors above it.
    Measured (2026-11-24, shared 2-core CPU, 1 thread): held-out accuracy 0.387 untrained -> 0.800 after
    48 steps (eval loss 0.720 -> 0.370), 765 s of training, 930 s for the whole test; 4 Dec 2026 (AMD EPYC, 2 threads,
    prefix-shared rows): 0.387 -> 0.833, 223 s for the whole test. For scale, surface rules on the same 150 pairs:
    "the longer answer wins" 0.587, "the answer with a negation wins" 0.703.
    """
    out = tmp_path / "rm"
    code = main(["rm", "--config", str(CONFIGS / "rm_smollm2_lora.yaml"),
                 f"data={data_dir / 'truthfulqa' / 'TruthfulQA.csv'}", f"output_dir={out}", "progress=none"])
    assert code == 0
    evals = [r for r in read_metrics(out) if "eval_accuracy" in r]
    print("held-out reward accuracy:", [(e["step"], round(e["eval_accuracy"], 4), round(e["eval_loss"], 4))
                                         for e in evals])
    assert evals[-1]["eval_accuracy"] >= 0.58
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    scorer = load_scorer(str(out))  # the merged scorer is a plain HF checkpoint
    assert type(scorer).__name__ == "LlamaForSequenceClassification"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_rm_lora_merge_interrupted_leaves_an_unfinished_run_that_a_rerun_completes(tmp_path, monkeypatch):
    # the merged scorer was written straight into output_dir after the closing metrics row: a kill during that
    # write left a truncated model.safetensors in a run a rerun called finished ("nothing to do")
    import transformers

    data, out = marker_pairs(tmp_path / "pairs.jsonl", n=40), tmp_path / "rm_lora"
    args = (f"data={data}", f"output_dir={out}", "max_steps=4", "save_steps=2", "resume=auto",
            "lora={r: 4, alpha: 8, dropout: 0.0}")
    real = transformers.PreTrainedModel.save_pretrained

    def dies_in_the_merge(self, directory, *a, **kw):
        if ".merged.tmp" in Path(directory).name:  # merge_adapter writes ..merged.tmp.tmp-* for .merged.tmp
            real(self, directory, *a, **kw)
            raise KeyboardInterrupt  # killed after the merged weights were staged, before they moved in
        return real(self, directory, *a, **kw)

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", dies_in_the_merge)
    assert rm(*args) != 0  # "alignlab rm: interrupted"
    assert "train_runtime" not in (out / "metrics.jsonl").read_text()  # not finished
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", real)
    assert rm(*args) == 0  # resumes from checkpoint-4 and merges
    assert "train_runtime" in (out / "metrics.jsonl").read_text() and not (out / ".merged.tmp").exists()
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").is_file()
    cfg = load_config(RewardConfig, out / "config.yaml")
    assert reevaluate(out, cfg, load_scorer(str(out)).eval())["eval_accuracy"] is not None


def _random_lora(model):
    """`model` with a LoRA adapter (r=4) whose B factors are random: an adapter that changes the numbers."""
    from alignlab.models.lora import LoraConfig, apply_lora

    torch.manual_seed(0)
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, w in model.named_parameters():
            if "lora_B" in n:
                w.normal_(0, 0.5)
    return model


def test_rm_lora_on_an_sft_adapter_folder_merges_what_it_trained(tmp_path):
    # the merged scorer was rebuilt on the RM adapter's recorded base, the bare model under the SFT adapter: the
    # SFT weights were dropped from output_dir (scores off by 0.22)
    from alignlab.models.load import load_model
    from alignlab.recipes.reward import run
    from alignlab.train.reward import load_reward_model

    sft = _random_lora(load_model("tiny-random"))
    sft.save_pretrained(tmp_path / "sft")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "sft")
    template = tmp_path / "template.jinja"  # the run's own template, not the base's
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    cfg = load_config(RewardConfig, CONFIGS / "rm_tiny.yaml", [
        f"model={tmp_path / 'sft'}", f"data={marker_pairs(tmp_path / 'pairs.jsonl', n=8)}", "lora={r: 4, alpha: 8}",
        "max_steps=1", "batch_size=2", "eval_split=0", f"output_dir={tmp_path / 'rm'}", "progress=none",
        f"chat_template={template}"])
    tok, model = load_reward_model(cfg)
    run(cfg, model=model, tokenizer=tok)
    enc = tok(["Hello there, how are you?", "The capital of France is Paris."], return_tensors="pt", padding=True)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    # out/adapter recorded the bare model as its base: reloaded alone (value_model, merge, reward_model path) it
    # scored on the wrong trunk; and it held no tokenizer, so the base's chat template was used where it loaded
    adapter = load_scorer(str(tmp_path / "rm" / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(model.eval()(**enc).logits, merged(**enc).logits, atol=1e-5)
        assert torch.allclose(adapter(**enc).logits, merged(**enc).logits, atol=1e-5)
    assert load_tokenizer(str(tmp_path / "rm" / "adapter")).chat_template == template.read_text()


def test_a_scorer_whose_pad_is_eos_scores_the_same_token_in_transformers(tmp_path):
    """SmolLM2 pads with its EOS: transformers pools at the last non-pad token, so the saved scorer loaded with
    AutoModelForSequenceClassification scored the token before each row's closing EOS (0.2 against -0.02 on
    SmolLM2). The RM now pads with another special token, in its config and tokenizer alike."""
    import json
    import shutil

    from alignlab.models.heads import score
    from alignlab.models.load import resolve_model
    from alignlab.train.reward import load_reward_model

    base = tmp_path / "pad_is_eos"
    shutil.copytree(resolve_model("tiny-random"), base)
    for name, key, value in (("config.json", "pad_token_id", 2), ("tokenizer_config.json", "pad_token", "<|im_end|>")):
        cfg = json.loads((base / name).read_text())
        (base / name).write_text(json.dumps({**cfg, key: value}))
    cfg = load_config(RewardConfig, CONFIGS / "rm_tiny.yaml", [f"model={base}", f"output_dir={tmp_path / 'x'}"])
    tok, model = load_reward_model(cfg)
    assert tok.pad_token_id not in (None, tok.eos_token_id) and model.config.pad_token_id == tok.pad_token_id
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rows = [tok("Is the sky blue?").input_ids + [tok.eos_token_id], tok("Yes it is.").input_ids + [tok.eos_token_id]]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    right = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (right - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (right - len(r)) for r in rows])
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask).logits[:, 0], score(model.eval(), ids, mask),
                              atol=1e-5)


def test_a_lora_critic_on_a_lora_reward_model_records_that_adapter_as_its_base(tmp_path):
    # the RM adapter was folded in, then the critic's adapter recorded the bare model as its base: out/critic
    # reloaded (value_model: out/critic) on another trunk, values 0.19 apart
    from alignlab.models.lora import LoraConfig
    from alignlab.rl.config import PolicyGradientConfig
    from alignlab.rl.critic import build_critic

    rm = _random_lora(load_scorer("tiny-random"))
    rm.save_pretrained(tmp_path / "rm_adapter")
    cfg = PolicyGradientConfig(model="tiny-random", value_model=str(tmp_path / "rm_adapter"), estimator="gae",
                               lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    critic, _ = build_critic(cfg, "cpu")
    assert critic.peft_config["default"].base_model_name_or_path == str(tmp_path / "rm_adapter")
    critic.save_pretrained(tmp_path / "critic")
    ids = torch.tensor([[5, 9, 14, 30, 2]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        again = load_scorer(str(tmp_path / "critic")).eval()(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(critic.eval()(input_ids=ids, attention_mask=mask).logits, again, atol=1e-5)
