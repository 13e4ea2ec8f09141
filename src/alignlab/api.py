"""alignlab from Python: one function per command, the code path the command line itself runs.

    import alignlab
    sft = alignlab.sft(model="tiny-random", data=[{"prompt": "2+2=", "completion": "4"}] * 16,
                       output_dir=None, max_steps=4, batch_size=4)
    dpo = alignlab.dpo(model=sft.model, tokenizer=sft.tokenizer, data=pairs, output_dir=None, max_steps=4)

Each training function takes its config dataclass (`SFTConfig`, `DPOConfig`, `RewardConfig`) and/or the same
keys as keyword arguments; keywords win over the config object, and the result is checked exactly as
`--config FILE key=value` is on the command line (unknown keys, wrong types and cross-field errors raise
`ConfigError`). Where the command line takes a path, these also take objects:

- `model` (and DPO's `ref_model`): a `PreTrainedModel`, plain or peft, with its `tokenizer=`; `model` is trained in
  place (not copied; with `lora`, adapters are added to a plain model, whose weights a kept output_dir holds as
  base_model/ for them), the reference is a frozen copy of `ref_model` (left as given), or of the policy before
  training without one.
- `data` / `eval_data`: a list of dicts in any format the files may hold (`columns` mapping included), a
  `datasets.Dataset`, or a `DatasetDict` (its `train` split). Records are validated as file rows are.
- `callbacks`: `alignlab.train.callbacks.Callback` objects (log, eval, save, step end; a stop request).

`output_dir=None` trains in a temporary folder that is removed afterwards: nothing is left on disk and the
result holds the model, tokenizer and metrics in memory (`result.output_dir` is None). Any other value
behaves as on the command line (checkpoints, final model, metrics.jsonl, config.yaml, report.html).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.api_inputs import (
    Records,
    as_records,
    check_judge,
    check_model_object,
    check_tokenizer,
    is_mixture,
    is_path,
    model_label,
)
from alignlab.config import build_config
from alignlab.errors import AlignlabError

__all__ = ["RunResult", "distill", "dpo", "evaluate", "generate", "grpo", "medusa", "online_dpo", "ppo", "pretrain",
           "reward_model", "sft"]


@dataclass
class RunResult:
    """What a training function returns."""

    model: Any
    """The trained model, in memory (peft-wrapped when LoRA was used)."""
    tokenizer: Any
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics.jsonl row: training rows, evaluations (eval_ keys) and the closing train_runtime row."""
    final_eval: dict[str, float] = field(default_factory=dict)
    """The last evaluation's metrics (empty without eval data)."""
    output_dir: Path | None = None
    """Where the model, metrics.jsonl, config.yaml and report.html are; None for output_dir=None."""
    train: Any = None
    """The loop's TrainResult (steps, runtime, every evaluation)."""

    @property
    def history(self) -> list[dict[str, Any]]:
        """The training rows only (those with a loss), in step order."""
        return [r for r in self.metrics if "loss" in r]


@dataclass
class _Job:
    """A training call's config plus the objects that stand in for paths."""

    cfg: Any
    model: Any = None
    tokenizer: Any = None
    records: Records | None = None
    eval_records: Records | None = None
    temp_dir: str | None = None


def _job(cls: type, config: Any, keys: dict[str, Any], model: Any, tokenizer: Any, data: Any,
         eval_data: Any) -> _Job:
    objects: dict[str, Any] = {}
    for key, value in (("model", model), ("data", data), ("eval_data", eval_data)):
        if value is None:
            continue
        if is_path(value):
            keys[key] = os.fspath(value)
        elif key != "model" and is_mixture(value):  # the config key's own form: [{path, weight}, ...]
            keys[key] = list(value)
        else:
            if key == "model":
                check_model_object(value, "model")
            objects[key] = value if key == "model" else as_records(value, key)
            keys[key] = str(objects[key]) if key != "model" else model_label(value)
    if tokenizer is not None:
        check_tokenizer(tokenizer)
    if "model" in objects and tokenizer is None:
        raise AlignlabError("tokenizer: an in-memory model needs its tokenizer (tokenizer=...)")
    if tokenizer is not None and "model" not in objects:  # it was ignored: the named model's own was loaded
        raise AlignlabError("tokenizer: goes with an in-memory model=; a model named by path or alias loads its own "
                            "tokenizer (to use another, load the model too and pass both)")
    temp = None
    if "output_dir" in keys and keys["output_dir"] is None:
        temp = tempfile.mkdtemp(prefix="alignlab-run-")
        keys["output_dir"] = temp
    try:
        cfg = build_config(cls, config, keys, frozenset(objects))
    except BaseException:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    return _Job(cfg, objects.get("model"), tokenizer, objects.get("data"), objects.get("eval_data"), temp)


def _with_lora(model: Any, job: _Job) -> Any:
    """The in-memory model with the run's LoRA adapters. Its weights need not be those of the name it came from
    (trained or edited in memory): the adapters' base is then `output_dir/base_model`, which `_finish` writes (the
    alias recorded before loaded other weights, silently)."""
    from alignlab.train.checkpoint import is_peft

    if job.cfg.lora is None:
        return model
    if is_peft(model):
        raise AlignlabError("lora: the in-memory model already has peft adapters; drop lora= to train them")
    from alignlab.models.lora import apply_lora

    peft = apply_lora(model, job.cfg.lora)
    if not job.temp_dir:
        for adapter in peft.peft_config.values():
            adapter.base_model_name_or_path = str(Path(job.cfg.output_dir).resolve() / "base_model")
    return peft


def _finish(job: _Job, model: Any, tokenizer: Any, result: Any) -> RunResult:
    from alignlab.train.metrics import read_metrics

    out = Path(job.cfg.output_dir)
    if job.model is not None and job.cfg.lora is not None and not job.temp_dir:
        from alignlab.models.lora import save_base_weights

        save_base_weights(model, out / "base_model")  # what the adapters were trained on (_with_lora)
    try:
        metrics = read_metrics(out) if (out / "metrics.jsonl").is_file() else []
    finally:
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
    final = {k: v for k, v in (result.evals[-1] if result.evals else {}).items() if k != "step"}
    return RunResult(model, tokenizer, metrics, final, None if job.temp_dir else out, result)


def _run(job: _Job, load: Any, recipe_run: Any, callbacks: Any, **extra: Any) -> RunResult:
    """Check the batch against the ranks, seed, load (or take) the model, run the recipe; removes a temp output_dir."""
    from alignlab.models.tokenizer import use_chat_template
    from alignlab.train.loop import seed_everything
    from alignlab.train.world import World

    try:
        World.for_run(job.cfg)
        seed_everything(job.cfg.seed)  # as the recipe does before loading: LoRA and new heads start the same
        if job.model is None:
            tokenizer, model = load(job.cfg)
        else:  # chat_template applies to a given tokenizer too
            tokenizer, model = use_chat_template(job.tokenizer, job.cfg.chat_template), _with_lora(job.model, job)
        result = recipe_run(job.cfg, model=model, tokenizer=tokenizer, rows=job.records,
                            eval_rows=job.eval_records, callbacks=list(callbacks or ()), **extra)
    except BaseException:
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        raise
    return _finish(job, model, tokenizer, result)


def sft(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
        eval_data: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """Supervised fine-tuning (`alignlab sft`); keys are SFTConfig's (see `alignlab sft --help`)."""
    from alignlab.models.prepare import prepare_model
    from alignlab.recipes import sft as recipe

    job = _job(recipe.SFTConfig, config, keys, model, tokenizer, data, eval_data)
    return _run(job, prepare_model, recipe.run, callbacks)


def dpo(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, ref_model: Any = None,
        data: Any = None, eval_data: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """The DPO family (`alignlab dpo`); keys are DPOConfig's (see `alignlab dpo --help`)."""
    from alignlab.models.prepare import prepare_model
    from alignlab.recipes import dpo as recipe

    if ref_model is not None and is_path(ref_model):
        keys["ref_model"], ref_model = os.fspath(ref_model), None
    elif ref_model is not None:
        check_model_object(ref_model, "ref_model")
    job = _job(recipe.DPOConfig, config, keys, model, tokenizer, data, eval_data)
    if (job.model is not None or ref_model is not None) and job.cfg.reference == "cache":
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        raise AlignlabError("reference: cache keys its files by the models named in the config; with an "
                            "in-memory model use reference=model (or auto)")
    if ref_model is not None:
        job.cfg.ref_model = model_label(ref_model)
    # an in-memory policy without ref_model: the recipe's reference is a frozen copy of its starting weights
    return _run(job, prepare_model, recipe.run, callbacks, ref_model=ref_model)


def reward_model(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
                 eval_data: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """A reward model (`alignlab rm`); keys are RewardConfig's. An in-memory `model` must be a scorer
    (AutoModelForSequenceClassification with num_labels=1); a path or alias gets a new scalar head."""
    from alignlab.recipes import reward as recipe
    from alignlab.train.reward import load_reward_model

    job = _job(recipe.RewardConfig, config, keys, model, tokenizer, data, eval_data)
    if job.model is not None and getattr(job.model.config, "pad_token_id", 0) is None:
        job.model.config.pad_token_id = job.tokenizer.pad_token_id
    return _run(job, load_reward_model, recipe.run, callbacks)


def pretrain(config: Any = None, /, *, callbacks: Any = (), **keys: Any) -> RunResult:
    """Pretraining (`alignlab pretrain`); keys are PretrainConfig's; the result holds the model and its tokenizer."""
    from alignlab.models.load import load_model, load_tokenizer
    from alignlab.recipes import pretrain as recipe

    job = _job(recipe.PretrainConfig, config, keys, None, None, None, None)
    try:
        result = recipe.run(job.cfg, callbacks=list(callbacks or ()))
        out = job.cfg.output_dir
        model, tokenizer = load_model(out), load_tokenizer(out)
    except BaseException:
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        raise
    return _finish(job, model, tokenizer, result)


def medusa(config: Any = None, /, *, callbacks: Any = (), **keys: Any) -> RunResult:
    """Medusa heads on a frozen base (`alignlab medusa MODEL`); keys are MedusaConfig's (model, data, num_heads,
    ...). The result's model is the MedusaModel (base + heads)."""
    from alignlab.recipes import medusa as recipe

    job = _job(recipe.MedusaConfig, config, keys, None, None, None, None)
    try:
        result, model, tokenizer = recipe.run(job.cfg, callbacks=list(callbacks or ()))
    except BaseException:
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        raise
    return _finish(job, model, tokenizer, result)


def _rl(cls: type, recipe_run: Any, config: Any, keys: dict[str, Any], model: Any, tokenizer: Any, data: Any,
        eval_data: Any, reward: Any, callbacks: Any) -> RunResult:
    """An online RL run: `data` may also be a built-in set name ("builtin:sentiment"), `reward` a callable
    reward(prompts, completions, **fields) -> list[float] (its name goes to config.yaml)."""
    reward_fn = None
    if callable(reward):
        reward_fn, keys["reward"] = reward, f"<python {getattr(reward, '__name__', 'reward')}>"
    elif reward is not None:
        keys["reward"] = reward
    if isinstance(data, str) and data.startswith("builtin:"):
        keys["data"], data = data, None
    job = _job(cls, config, keys, model, tokenizer, data, eval_data)
    if reward_fn is not None and (job.cfg.reward_weights or job.cfg.reward_options):
        # the recipes use the callable as given: the keys would be accepted and ignored
        if job.temp_dir:
            shutil.rmtree(job.temp_dir, ignore_errors=True)
        raise AlignlabError("reward_weights and reward_options are for rewards named by string; give a callable "
                            "reward its options yourself (functools.partial) and weigh inside it")
    return _run(job, _prepare, recipe_run, callbacks, reward_fn=reward_fn)


def _prepare(cfg: Any) -> tuple[Any, Any]:
    from alignlab.models.prepare import prepare_model

    return prepare_model(cfg)


def grpo(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
         eval_data: Any = None, reward: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """GRPO and the critic-free estimators (`alignlab grpo`); keys are PolicyGradientConfig's. `data`: prompt
    records, a file or "builtin:NAME"; `reward`: a registered name, a list, or a Python callable."""
    from functools import partial

    from alignlab.recipes.rl import run
    from alignlab.rl.config import PolicyGradientConfig

    return _rl(PolicyGradientConfig, partial(run, label="grpo"), config, keys, model, tokenizer, data, eval_data,
               reward, callbacks)


def ppo(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
        eval_data: Any = None, reward: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """PPO with a critic (`alignlab ppo`); keys are PPOConfig's; objects as for `grpo`."""
    from functools import partial

    from alignlab.recipes.rl import run
    from alignlab.rl.config import PPOConfig

    return _rl(PPOConfig, partial(run, label="ppo"), config, keys, model, tokenizer, data, eval_data, reward,
               callbacks)


def online_dpo(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
               eval_data: Any = None, reward: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """Online DPO (`alignlab online-dpo`); keys are OnlineDPOConfig's; objects as for `grpo`."""
    from alignlab.recipes.online_dpo import run
    from alignlab.rl.config import OnlineDPOConfig

    return _rl(OnlineDPOConfig, run, config, keys, model, tokenizer, data, eval_data, reward, callbacks)


def distill(config: Any = None, /, *, model: Any = None, tokenizer: Any = None, data: Any = None,
            eval_data: Any = None, callbacks: Any = (), **keys: Any) -> RunResult:
    """On-policy distillation (`alignlab distill`); keys are DistillConfig's (`teacher`, `beta`, ...); the student
    may be an in-memory model, the prompts records, a file or "builtin:NAME"."""
    from alignlab.recipes.distill import run
    from alignlab.rl.config import DistillConfig

    if isinstance(data, str) and data.startswith("builtin:"):
        keys["data"], data = data, None
    job = _job(DistillConfig, config, keys, model, tokenizer, data, eval_data)
    return _run(job, _prepare, run, callbacks)


def evaluate(config: Any = None, /, *, models: dict[str, tuple[Any, Any]] | None = None, judge: Any = None,
             **keys: Any) -> dict[str, Any]:
    """Evaluations (`alignlab eval`); keys are EvalConfig's. `models` maps a name used in checkpoints,
    baseline or reference to an in-memory (model, tokenizer) used instead of loading that name; `judge` is a
    judge object (alignlab.eval.judges: FunctionJudge(python_fn), LLMJudge, RewardModelJudge, or your own
    Judge subclass) used by every evaluation that needs one instead of its configured judge.
    Returns the eval.json payload (config, results, seconds); eval.json and report.html go to output_dir."""
    from alignlab.eval.runner import EvalConfig, run

    cfg = build_config(EvalConfig, config, keys)
    named = {*cfg.checkpoints, cfg.baseline, cfg.reference}
    unused = sorted(set(models or {}) - named)
    if unused:
        raise AlignlabError(f"models: {unused} are not named in checkpoints, baseline or reference")
    for name, pair in (models or {}).items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise AlignlabError(f"models[{name!r}]: expected a (model, tokenizer) pair, got {type(pair).__name__}")
        check_model_object(pair[0], f"models[{name!r}]")
        check_tokenizer(pair[1], f"models[{name!r}] tokenizer")
    check_judge(judge)
    return run(cfg, models=models, judge=judge)


def generate(model: Any, prompts: Any, *, tokenizer: Any = None, n: int = 1, **sampling: Any) -> Any:
    """Sample `n` completions per prompt (`alignlab generate`). `model`: alias, directory or an in-memory
    model (then `tokenizer=` too); `prompts`: a path, or a list of strings (raw text), message lists
    ([{role, content}, ...], chat template applied) or prompt records. `sampling`: SamplingConfig keys
    (max_new_tokens, temperature, top_p, top_k, seed, ...). Returns a GenerationResult (`.samples[i].text`)."""
    from alignlab.rollout.generate import SamplingConfig
    from alignlab.rollout.generate import generate as sample

    cfg = build_config(SamplingConfig, None, sampling)
    if type(n) is not int or n < 1:  # "2" and 2.5 failed deep inside the sampler
        raise AlignlabError(f"n: completions per prompt must be a whole number >= 1, got {n!r}")
    if tokenizer is not None:
        check_tokenizer(tokenizer)
    if is_path(model):
        from alignlab.models.load import load_model, load_tokenizer

        model, tokenizer = load_model(os.fspath(model)), tokenizer or load_tokenizer(os.fspath(model))
    else:
        check_model_object(model, "model")
        if tokenizer is None:
            raise AlignlabError("tokenizer: an in-memory model needs its tokenizer (tokenizer=...)")
    if not (is_path(prompts) or isinstance(prompts, (list, tuple))):
        raise AlignlabError(f"prompts: expected a path or a list of prompts, got {type(prompts).__name__}")
    if is_path(prompts) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)
                             and "role" not in prompts[0]):
        from alignlab.data.sources import load_rows

        prompts = load_rows(prompts if is_path(prompts) else as_records(prompts, "prompts"), task="prompt").rows
    return sample(model, tokenizer, list(prompts), cfg, n=n)
