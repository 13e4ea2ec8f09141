"""alignlab from Python: lazy import, one code path with the CLI (same metrics), objects for paths."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import alignlab
from alignlab.cli import main
from alignlab.config import ConfigError
from alignlab.errors import AlignlabError
from alignlab.train.callbacks import Callback

SRC = str(Path(__file__).resolve().parents[2] / "src")
COMMON = {"model": "tiny-random", "max_steps": 3, "batch_size": 4, "logging_steps": 1, "progress": "none",
          "cpu_threads": 1, "device": "cpu", "eval_split": 0.1, "max_length": 64}
# Wall-clock measurements differ between any two runs; everything else must be identical.
TIMING = {"tokens_per_second", "pairs_per_second", "samples_per_second", "sequences_per_second", "peak_memory_mb",
          "train_runtime"}

SFT_ROWS = [{"prompt": f"Count to {i % 7 + 1} ({i}):", "completion": " ".join(str(j) for j in range(i % 7 + 2))}
            for i in range(30)]  # 30 distinct rows: a held-out copy of a training row would not be scored
PAIRS = [{"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
          "rejected": "no" if i % 2 == 0 else "yes"} for i in range(30)]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_args(keys):
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in keys.items()]


def test_import_alignlab_is_lazy():
    code = ("import sys, alignlab; heavy = [m for m in ('torch', 'transformers', 'datasets', 'matplotlib', "
            "'alignlab.api') if m in sys.modules]; print(heavy, sorted(alignlab.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("[] ['Callback', 'RunResult', 'distill', 'dpo', 'evaluate', 'generate', 'grpo', 'medusa', "
                          "'online_dpo', "
                          "'ppo', 'pretrain', 'reward_model', 'sft']")


@pytest.mark.parametrize(("command", "function", "rows", "extra"), [
    ("sft", "sft", SFT_ROWS, {"learning_rate": 1e-3}),
    ("dpo", "dpo", PAIRS, {"learning_rate": 1e-3, "loss": ["dpo", "sft"], "loss_weights": [1.0, 0.2]}),
    ("rm", "reward_model", PAIRS, {"learning_rate": 1e-3}),
])
def test_cli_and_python_function_give_the_same_metrics(tmp_path, command, function, rows, extra):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    keys = {**COMMON, **extra}
    assert main([command, f"data={data}", f"output_dir={tmp_path / 'cli'}", *cli_args(keys)]) == 0
    from_file = getattr(alignlab, function)(data=str(data), output_dir=str(tmp_path / "py"), **keys)
    from_list = getattr(alignlab, function)(data=rows, output_dir=None, **keys)
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in cli if "loss" in r]) == 3 and any("eval_loss" in r for r in cli)
    assert without_timing(from_file.metrics) == without_timing(cli)
    assert without_timing(from_list.metrics) == without_timing(cli)  # in-memory rows: the same run
    assert from_file.output_dir == tmp_path / "py" and (tmp_path / "py" / "report.html").is_file()
    assert from_list.output_dir is None and from_file.final_eval == {
        k: v for k, v in from_file.train.evals[-1].items() if k != "step"}


PROMPTS = [{"prompt": f"Tell me about {w}."} for w in "cats rain tea jazz maps salt wolves clocks bread snow".split()]
RL = {"model": "tiny-random", "max_steps": 2, "batch_size": 4, "progress": "none", "cpu_threads": 1,
      "max_new_tokens": 6, "eval_prompts": 2, "eval_split": 0.2, "learning_rate": 1e-3}


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize(("command", "function", "extra"), [
    ("grpo", "grpo", {"num_generations": 2}),
    ("ppo", "ppo", {"mini_batch_size": 2}),
    ("online-dpo", "online_dpo", {}),
])
def test_rl_cli_and_python_function_give_the_same_metrics(tmp_path, command, function, extra):
    """The same prompts and reward through the CLI (a file and a reward named by path) and through Python (a
    list of dicts and the function object): identical metrics but for wall-clock ones."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    keys = {**RL, **extra}
    assert main([command, f"data={data}", f"output_dir={tmp_path / 'cli'}", f"reward={__file__}:length_reward",
                 *cli_args(keys)]) == 0
    run = getattr(alignlab, function)(data=PROMPTS, reward=length_reward, output_dir=None, **keys)
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]

    def steady(rows):
        return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in rows]

    assert len([r for r in cli if "reward_mean" in r]) == 2 and any("eval_reward" in r for r in cli)
    assert steady(run.metrics) == steady(cli)
    assert run.final_eval == {"eval_reward": cli[-2]["eval_reward"]} and run.output_dir is None


def test_keys_are_checked_as_on_the_command_line_and_temp_dirs_are_removed(tmp_path):
    from alignlab.models.load import load_model, load_tokenizer

    with pytest.raises(ConfigError, match="unknown key nope for SFTConfig"):
        alignlab.sft(data=SFT_ROWS, nope=1)
    with pytest.raises(ConfigError, match="max_steps: expected an integer"):
        alignlab.sft(data=SFT_ROWS, max_steps="many")
    with pytest.raises(AlignlabError, match="record 1 is a str"):
        alignlab.sft(data=[SFT_ROWS[0], "text"], output_dir=None, **COMMON)
    with pytest.raises(AlignlabError, match="model: expected a path, an alias or a loaded model"):
        alignlab.sft(model=object(), data=SFT_ROWS, output_dir=None)
    rows = write_jsonl(tmp_path / "x.jsonl", SFT_ROWS)
    with pytest.raises(AlignlabError, match=r"models: \['b'\] are not named"):
        alignlab.evaluate(checkpoints=["a"], evaluations=[{"kind": "perplexity", "data": str(rows)}],
                          models={"b": (None, None)})
    with pytest.raises(ConfigError, match="evaluations.0..data: nowhere.jsonl not found"):  # as data= on the CLI
        alignlab.evaluate(checkpoints=["a"], evaluations=[{"kind": "perplexity", "data": "nowhere.jsonl"}])
    before = set(Path(tempfile.gettempdir()).glob("alignlab-run-*"))
    with pytest.raises(AlignlabError, match=r"<in-memory list: 1 records, sha256 [0-9a-f]{16}>.*field"):
        alignlab.sft(data=[{"prompt": "x", "completion": ""}], output_dir=None, **COMMON)
    with pytest.raises(AlignlabError, match="tokenizer"):  # refused before a temporary folder is made
        alignlab.sft(model=load_model("tiny-random"), data=SFT_ROWS, output_dir=None)

    with pytest.raises(AlignlabError, match="reference: cache"):
        alignlab.dpo(model=load_model("tiny-random"), tokenizer=load_tokenizer("tiny-random"), data=PAIRS,
                     output_dir=None, reference="cache")
    assert set(Path(tempfile.gettempdir()).glob("alignlab-run-*")) == before


def test_keywords_resolve_paths_and_set_the_chat_template_as_the_command_line_does(tmp_path, monkeypatch):
    """A relative data path is looked for in the working directory, then $ALIGNLAB_DATA (as `data=` on the
    command line); chat_template applies to an in-memory model's tokenizer as to a loaded one."""
    from alignlab.models.load import load_model, load_tokenizer

    root, cwd = tmp_path / "data_root", tmp_path / "cwd"
    (root / "sub").mkdir(parents=True)
    cwd.mkdir()
    write_jsonl(root / "sub" / "rows.jsonl", SFT_ROWS)
    template = tmp_path / "chat.jinja"
    template.write_text(load_tokenizer("tiny-random").chat_template.replace("<|im_start|>", "<|im_start|> "))
    monkeypatch.setenv("ALIGNLAB_DATA", str(root))
    monkeypatch.chdir(cwd)
    res = alignlab.sft(data="sub/rows.jsonl", output_dir=None, **COMMON)
    assert res.train.step == 3
    tok = load_tokenizer("tiny-random")
    res = alignlab.sft(model=load_model("tiny-random"), tokenizer=tok, data=SFT_ROWS, output_dir=None,
                       chat_template=str(template), **{k: v for k, v in COMMON.items() if k != "model"})
    assert res.tokenizer.chat_template == template.read_text()


def test_datasets_objects_in_memory_model_and_a_stopping_callback(tmp_path):
    import datasets

    from alignlab.models.load import load_model, load_tokenizer

    ds = datasets.Dataset.from_list(SFT_ROWS)
    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    calls = []

    class StopAt2(Callback):
        def on_step_end(self, step, metrics):
            calls.append(step)
            return step == 2

    res = alignlab.sft(model=model, tokenizer=tok, data=datasets.DatasetDict({"train": ds}), output_dir=str(tmp_path),
                       callbacks=[StopAt2()], **{k: v for k, v in COMMON.items() if k != "model"})
    assert res.model is model and calls == [1, 2] and res.train.step == 2
    assert "model: <in-memory LlamaForCausalLM" in (tmp_path / "config.yaml").read_text()
    assert "data: '<in-memory datasets.Dataset: 30 records, sha256 " in (tmp_path / "config.yaml").read_text()
    with pytest.raises(AlignlabError, match="none is 'train'"):
        alignlab.sft(data=datasets.DatasetDict({"test": ds}), output_dir=None)


def test_bf16_refuses_a_model_whose_trainable_weights_are_not_float32(tmp_path):
    """bf16 keeps float32 master weights and optimizer states (its help): an in-memory bf16 model trained in pure
    bf16 instead, 70% of its elements left unchanged by 3 steps at lr 2e-5."""
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    model, tok = load_model("tiny-random").to(torch.bfloat16), load_tokenizer("tiny-random")
    for run, keys in ((alignlab.sft, {**COMMON, "data": SFT_ROWS}),
                      (alignlab.grpo, {**RL, "data": PROMPTS, "reward": length_reward})):
        keys = {k: v for k, v in keys.items() if k != "model"}
        with pytest.raises(AlignlabError, match="trainable parameters are torch.bfloat16"):
            run(model=model, tokenizer=tok, output_dir=str(tmp_path / run.__name__), bf16=True, **keys)


def test_other_in_memory_records_do_not_resume_a_run(tmp_path):
    # config.yaml named them by their count alone: other records of the same count resumed the run on them
    alignlab.sft(data=SFT_ROWS, output_dir=str(tmp_path), **{**COMMON, "max_steps": 1})
    other = [{**r, "completion": r["completion"] + "!"} for r in SFT_ROWS]
    with pytest.raises(AlignlabError, match=r"data: '<in-memory list: 30 records, sha256 \w+>' -> '<in-memory list: "):
        alignlab.sft(data=other, output_dir=str(tmp_path), **{**COMMON, "max_steps": 2})


def test_a_config_object_with_keys_on_top_is_checked_and_left_unchanged():
    from alignlab.api import build_config
    from alignlab.config import from_dict
    from alignlab.eval.runner import EvalConfig
    from alignlab.recipes.sft import SFTConfig

    base = SFTConfig(model="tiny-random", max_steps=5)
    cfg = build_config(SFTConfig, base, {"max_steps": 7, "lora": {"r": 4}})
    assert (cfg.max_steps, cfg.lora.r, cfg.model, base.max_steps, base.lora) == (7, 4, "tiny-random", 5, None)
    with pytest.raises(ConfigError, match="max_steps: must be -1"):
        build_config(SFTConfig, base, {"max_steps": 0})
    with pytest.raises(ConfigError, match="unknown key nope"):
        build_config(SFTConfig, base, {"nope": 1})
    with pytest.raises(TypeError, match="expected a SFTConfig"):
        build_config(SFTConfig, EvalConfig(), {})
    # An eval config whose items keep default sub-configs (the llm judge of a kl item) passes through as is.
    ev = from_dict(EvalConfig, {"checkpoints": ["a"], "reference": "r", "evaluations": [{"kind": "kl", "data": "y"}]})
    assert build_config(EvalConfig, ev, {"n_boot": 5}).n_boot == 5 and ev.n_boot == 1000
    # the object's own relative paths resolve as the command line's do (they were left relative: a shared-data
    # file named "gsm8k/test.jsonl" was then looked for on the hub)
    data = os.environ.get("ALIGNLAB_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    if (Path(data) / "gsm8k" / "test.jsonl").is_file():
        resolved = build_config(SFTConfig, SFTConfig(data="gsm8k/test.jsonl"), {})
        assert resolved.data == str((Path(data) / "gsm8k" / "test.jsonl").resolve())
        # a mixture's sources too (left relative, then "not a local file")
        mixed = build_config(SFTConfig, SFTConfig(data=[{"path": "gsm8k/test.jsonl", "data_limit": 4}]), {})
        assert mixed.data[0].path == resolved.data and mixed.data[0].data_limit == 4
    # the object's own fields are checked as a file's keys are: bf16="false" (truthy text) trained under bf16
    for bad, match in ((dict(bf16="false"), "bf16: expected true or false"),
                       (dict(max_steps=2.5), "max_steps: expected an integer"),
                       (dict(lr_scheduler="cosin"), "'cosin' is not one of the allowed values")):
        with pytest.raises(ConfigError, match=match):
            build_config(SFTConfig, SFTConfig(model="tiny-random", **bad), {})


def test_generate_takes_an_alias_or_an_in_memory_model_and_strings_or_records():
    from alignlab.models.load import load_model, load_tokenizer

    by_alias = alignlab.generate("tiny-random", ["Hi there"], max_new_tokens=4, greedy=True)
    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    in_memory = alignlab.generate(model, [{"prompt": "Hi there"}], tokenizer=tok, max_new_tokens=4, greedy=True)
    assert [s.completion_ids for s in by_alias.samples] == [s.completion_ids for s in in_memory.samples]
    assert len(by_alias.samples[0].completion_ids) == 4
    with pytest.raises(ConfigError, match="unknown key beams"):
        alignlab.generate(model, ["x"], tokenizer=tok, beams=2)
    # raw AttributeError / TypeError / "cannot unpack" deep inside before
    with pytest.raises(AlignlabError, match="model: expected a path, an alias or a loaded model"):
        alignlab.generate(123, ["x"], tokenizer=tok)
    with pytest.raises(AlignlabError, match="prompts: expected a path or a list of prompts, got int"):
        alignlab.generate(model, 42, tokenizer=tok)
    with pytest.raises(AlignlabError, match=r"models\['m'\]: expected a \(model, tokenizer\) pair"):
        alignlab.evaluate(checkpoints=["m"], models={"m": model}, evaluations=[{"kind": "perplexity", "data": "x"}])
    with pytest.raises(AlignlabError, match="tokenizer"):
        alignlab.generate(model, ["x"])


def test_evaluate_takes_a_judge_object(tmp_path):
    """A FunctionJudge built in Python around a function that prefers longer answers is the judge of the run:
    it, not the config's sentiment judge, scores the comparisons (its calls are counted)."""
    from alignlab.eval.judges import FunctionJudge

    calls = []

    def longer(prompts, completions, **_):
        calls.append(len(completions))
        return [float(len(c)) for c in completions]

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in PROMPTS])
    out = alignlab.evaluate(
        checkpoints=["tiny-random"], baseline="tiny-random", output_dir=str(tmp_path / "eval"), device="cpu",
        evaluations=[{"kind": "win_rate", "data": str(data), "data_limit": 4,
                      "sampling": {"max_new_tokens": 4}, "judge": {"kind": "function", "reward": "sentiment"}}],
        judge=FunctionJudge(longer))
    assert calls and out["results"] and (tmp_path / "eval" / "eval.json").is_file()


def test_pretrain_cli_and_python_function_give_the_same_metrics(tmp_path):
    text = " ".join(f"the {w} sat on the mat and the {w} ran to the door." for w in
                    "cat dog bird fox owl hen cow pig ant bee".split() * 30)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    keys = {"data": str(corpus), "max_steps": 3, "batch_size": 4, "max_length": 32, "vocab_size": 300,
            "logging_steps": 1, "progress": "none", "cpu_threads": 1, "device": "cpu"}
    assert main(["pretrain", f"output_dir={tmp_path / 'cli'}", *cli_args(keys)]) == 0
    run = alignlab.pretrain(output_dir=None, **keys)
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(run.metrics) == without_timing(cli) and len(run.history) == 3
    assert run.output_dir is None and run.model.config.vocab_size <= 300


def test_distill_from_python_gives_the_cli_metrics(tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    keys = {**RL, "teacher": "tiny-random", "beta": 0.5}
    assert main(["distill", f"data={data}", f"output_dir={tmp_path / 'cli'}", *cli_args(keys)]) == 0
    run = alignlab.distill(data=PROMPTS, output_dir=None, **keys)
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    steady = [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in cli]
    assert [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in run.metrics] == steady
    assert "eval_kl" in run.final_eval


def test_medusa_from_python_gives_the_cli_metrics(tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    keys = {"data": str(data), "max_steps": 2, "batch_size": 2, "num_heads": 2, "distill_max_new_tokens": 6,
            "logging_steps": 1, "progress": "none", "cpu_threads": 1, "device": "cpu", "eval_split": 0.2}
    assert main(["medusa", "tiny-random", f"output_dir={tmp_path / 'cli'}", *cli_args(keys)]) == 0
    run = alignlab.medusa(model="tiny-random", output_dir=None, **keys)
    cli = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(run.metrics) == without_timing(cli) and len(run.history) == 2
    assert run.output_dir is None and type(run.model).__name__ == "MedusaModel"


def test_keys_and_objects_the_run_would_ignore_are_refused(tmp_path):
    # a tokenizer beside a model named by alias was ignored (its own was loaded); a callable reward's
    # reward_weights / reward_options were accepted and never applied
    from alignlab.models.load import load_tokenizer

    with pytest.raises(AlignlabError, match="tokenizer: goes with an in-memory model="):
        alignlab.sft(tokenizer=load_tokenizer("tiny-random"), data=SFT_ROWS, output_dir=None, **COMMON)
    before = set(Path(tempfile.gettempdir()).glob("alignlab-run-*"))
    for extra in ({"reward_weights": [100.0]}, {"reward_options": {"target": 3}}):
        with pytest.raises(AlignlabError, match="reward_weights and reward_options are for rewards named by string"):
            alignlab.grpo(model="tiny-random", data="builtin:sentiment", reward=lambda p, c, **k: [0.0] * len(c),
                          output_dir=None, max_steps=1, **extra)
    assert set(Path(tempfile.gettempdir()).glob("alignlab-run-*")) == before  # no temporary folder left behind


def test_a_wrong_model_object_is_named_by_its_argument():
    # model=123 blamed the tokenizer, then failed with AttributeError in the loop; ref_model=5 inside reference.py
    import alignlab

    with pytest.raises(AlignlabError, match="model: expected a path, an alias or a loaded model .* got int"):
        alignlab.sft(model=123, tokenizer=object(), data=[{"prompt": "p", "completion": "c"}])
    with pytest.raises(AlignlabError, match="ref_model: expected .* got int"):
        alignlab.dpo(model="tiny-random", ref_model=5, data=[{"prompt": "p", "chosen": "a", "rejected": "b"}])


def test_a_reference_model_object_is_left_as_given():
    # ref_model= was frozen, put in eval mode and (bf16) had its Linear weights rounded to bf16 in place, so a
    # float32 forward of it failed afterwards; ref_model=model froze the policy ("no trainable parameters")
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    policy, ref, tok = load_model("tiny-random"), load_model("tiny-random"), load_tokenizer("tiny-random")
    ref.train()
    before = {n: (p.dtype, p.requires_grad) for n, p in ref.named_parameters()}
    common = {**COMMON, "max_steps": 1}
    alignlab.dpo(**{**common, "model": policy}, tokenizer=tok, ref_model=ref, data=PAIRS, output_dir=None, bf16=True)
    assert {n: (p.dtype, p.requires_grad) for n, p in ref.named_parameters()} == before and ref.training
    ref(torch.tensor([[1, 2, 3]]))  # float32 forward
    result = alignlab.dpo(**{**common, "model": policy}, tokenizer=tok, ref_model=policy, data=PAIRS, output_dir=None)
    assert result.history[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # the reference is the starting policy


def test_lora_on_an_in_memory_model_saves_the_weights_it_trained_on(tmp_path):
    """The adapter named the alias the model came from (tiny-random), not the weights in memory (an SFT, an edit):
    `load_model(output_dir)` and `alignlab merge` rebuilt another model, 2.3 logits off, silently."""
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # trained in memory: no folder holds these weights
    result = alignlab.dpo(**{**COMMON, "model": model, "max_steps": 1}, tokenizer=tok, data=PAIRS,
                          output_dir=str(tmp_path / "run"), lora={"r": 4})
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "run" / "base_model").resolve())
    x = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        assert torch.equal(load_model(str(tmp_path / "run"))(x).logits, result.model.eval()(x).logits)


def test_bad_objects_and_a_mixture_keyword_are_taken_as_the_command_line_takes_them(tmp_path):
    """A tokenizer name, a plain function as judge and n="2" failed deep inside (TypeError, AttributeError after
    the models loaded); data=[{path, weight}] was read as two records instead of the config key's mixture."""
    from alignlab.models.load import load_model

    model = load_model("tiny-random")
    a, b = write_jsonl(tmp_path / "a.jsonl", SFT_ROWS), write_jsonl(tmp_path / "b.jsonl", SFT_ROWS[:10])
    evals = [{"kind": "perplexity", "data": str(a)}]
    with pytest.raises(AlignlabError, match="tokenizer: expected a loaded tokenizer .* got str"):
        alignlab.sft(**{**COMMON, "model": model}, tokenizer="tiny-random", data=SFT_ROWS, output_dir=None)
    with pytest.raises(AlignlabError, match=r"models\['x'\] tokenizer: expected a loaded tokenizer"):
        alignlab.evaluate(models={"x": (model, "tiny-random")}, checkpoints=["x"], evaluations=evals)
    for judge in (lambda *a: 0, "sentiment"):
        with pytest.raises(AlignlabError, match=r"judge: expected an alignlab.eval.judges.Judge \(FunctionJudge\(fn\) "
                           "wraps a Python function"):
            alignlab.evaluate(judge=judge, checkpoints=["tiny-random"], evaluations=evals)
    for n in ("2", 2.5, 0):
        with pytest.raises(AlignlabError, match="n: completions per prompt must be a whole number >= 1"):
            alignlab.generate("tiny-random", ["hi"], n=n, max_new_tokens=2)
    mix = [{"path": str(a), "weight": 1.0}, {"path": str(b), "weight": 2.0}]
    by_key = alignlab.sft(data=mix, output_dir=str(tmp_path / "k"), **{**COMMON, "max_steps": 1})
    assert main(["sft", *cli_args({**COMMON, "max_steps": 1, "data": mix, "output_dir": str(tmp_path / "c")})]) == 0
    cli = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert without_timing(by_key.metrics) == without_timing(cli)
