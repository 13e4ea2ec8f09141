"""Config of the on-policy commands (`alignlab grpo`, `ppo`, `online-dpo`, `distill`).

Built from RunConfig + OptimConfig (train/config.py), NOT from the offline TrainConfig: keys that cannot
apply here (max_length, max_eval_rows, distributed: data parallelism is DDP only) are not here and are
unknown-key errors. OnPolicyConfig holds what every on-policy command reads (prompts, sampling); RLConfig adds
the reward. Every key is read by the code (tests/integration/test_rl_keys.py proves it).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from alignlab.config import ConfigError, check_pad_multiple
from alignlab.rl.teacher import RemoteTeacher, remote_teacher
from alignlab.rollout.remote import RemoteEngine
from alignlab.train.config import OptimConfig, RunConfig

Estimator = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
LossAgg = Literal["token-mean", "token-sum-norm", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@dataclass
class OnPolicyConfig(OptimConfig, RunConfig):
    output_dir: str = "runs/rl"
    """Where checkpoints, the final model, metrics.jsonl, split.json and config.yaml go."""
    data: str = "builtin:sentiment"
    """Prompts: a file read as task=prompt (GSM8K's `answer` is kept for the gsm8k reward) or a built-in set
    builtin:sentiment | builtin:reverse | builtin:add | builtin:arith."""
    eval_data: str | None = None
    """Held-out prompt file for eval_reward; when empty, `eval_split` of the prompts are held out instead."""
    eval_split: float = 0.05
    """Fraction of the prompts held out for evaluation when eval_data is empty (never trained on; the split
    is written to output_dir/split.json). Built-in sets hold out `eval_prompts` prompts of their own."""
    eval_prompts: int = 32
    """At most this many held-out prompts are scored greedily at each evaluation (0 disables evaluation)."""
    num_prompts: int = 512
    """Prompts drawn from a built-in set (a file uses all its rows)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A malformed prompt row stops before training (error) or is counted and skipped (skip)."""
    data_format: str | None = None
    """Force the prompt file's format (e.g. sharegpt, alpaca, hh); null detects it."""
    columns: dict[str, str] | str | None = None
    """Column mapping for a prompt table in no known format, e.g. {prompt: Question} for TruthfulQA's CSV."""
    batch_size: int = 8
    """PROMPTS per RL step (all ranks); each gets num_generations samples."""
    learning_rate: float = 1e-5
    """Policy learning rate (RL wants it small: ~1e-6..1e-5 full fine-tuning, ~1e-5..1e-4 LoRA)."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "constant"
    """Decay after warmup; RL recipes usually keep it constant."""
    logging_steps: int = 1
    """Write a metrics.jsonl line (and a console line) every N RL steps."""
    num_generations: int = 4
    """Samples per prompt (the group size of grouped estimators; >= 2 for them)."""
    max_new_tokens: int = 32
    """Longest completion; rows that reach it count as truncated."""
    temperature: float = 1.0
    """Sampling temperature. grpo, ppo and distill divide the training forward's logits by it too, so ratios compare
    like with like; online-dpo scores its pairs at temperature 1 (as TRL's OnlineDPOTrainer)."""
    top_p: float = 1.0
    """Nucleus sampling during rollouts (1.0 = off)."""
    max_prompt_length: int = 256
    """Prompts longer than this keep their last tokens."""
    generation_batch_size: int = 64
    """Sequences decoded together during rollouts."""
    prefix_sharing: bool = True
    """Training forwards run each prompt once for all of its samples instead of one padded row per sample, same
    numbers: one padding-free row with span attention for grpo/ppo/distill and PPO's critic (rl/shared_prompt.py; a
    model not on alignlab's span attention uses padded rows), DPO's prefix-shared pair layout for online-dpo."""
    pad_to_multiple_of: int | None = 16
    """Round the width of those training forwards' rows up to a multiple of this (pad tokens in a span of their own,
    never attended to or trained on; null: no rounding): oneDNN keeps a kernel per new matrix shape, and every rollout
    has new token counts (bench-grpo, bf16, Xeon AMX, 1 thread: 4.24 GB peak against 4.67). Same numbers (tests)."""
    sampling_weights: Literal["model", "auto", "float32", "bfloat16"] = "model"
    """Weights the in-process sampler uses: as trained (model), or a bf16 copy made once per rollout (bfloat16; auto
    where the hardware has bf16 matrix units: 2.5x the float32 tokens/s on a Xeon with AMX, 1 thread; gen_vs_hf).
    Samples then come from other numbers than the trainer's: in grpo and ppo pair it with rollout_is."""
    rollout_engine: RemoteEngine | None = None
    """Sample rollouts on an OpenAI-compatible engine returning token ids and log-probs ({url, model, server:
    alignlab|vllm, api_key_env, ...}: `alignlab serve`, vLLM, SGLang; docs/serving.md), pushing it the policy's weights
    (or LoRA adapter) at the start and after every step; in grpo and ppo pair it with rollout_is. null: in-process."""

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Prompts one rank samples a step (batch_size counts prompts here; grad_accum splits each minibatch)."""
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size ({self.batch_size} prompts) must be a multiple of the world size ({world_size})")
        return self.batch_size // world_size

    def validate(self) -> None:
        RunConfig.validate(self)
        OptimConfig.validate(self)
        if not 0.0 <= self.eval_split < 1.0:
            raise ConfigError(f"eval_split: must be in [0, 1), got {self.eval_split}")
        for name in ("num_generations", "max_new_tokens", "max_prompt_length", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.eval_prompts < 0 or self.num_prompts < 1:
            raise ConfigError("eval_prompts must be >= 0 and num_prompts >= 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):  # else refused by the sampler, after the models load
            raise ConfigError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature} and {self.top_p}")
        check_pad_multiple(self.pad_to_multiple_of)
        if self.rollout_engine is not None:
            self.rollout_engine.validate()
            if self.sampling_weights != "model":
                raise ConfigError(f"sampling_weights: {self.sampling_weights} is for in-process sampling; the "
                                  "rollout_engine samples with its own weights")


@dataclass
class RLConfig(OnPolicyConfig):
    """On-policy training from a reward (grpo, ppo, online-dpo): the reward and the KL reference."""

    reward: str | list[str] = "sentiment"
    """Reward: sentiment | gsm8k | math | code | judge | format | reward_model | "module.path:function", or a list
    of them summed with reward_weights (e.g. [math, format])."""
    reward_weights: list[float] | None = None
    """Weights of a reward list (default 1 each); each component is logged as reward/<name>."""
    reward_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options for the reward factory, e.g. {path: runs/rm} for reward_model; for a list, keyed by name
    ({format: {pattern: ...}})."""
    reference: Literal["auto", "model", "adapter"] = "auto"
    """KL reference: adapter (LoRA policy, adapter off: no second copy), model (frozen copy), auto picks."""


@dataclass
class OverlongConfig:
    """DAPO's soft overlong punishment (Yu et al. 2025, Sec. 3.4, Eq. 13), added to the reward."""

    max_tokens: int = 0
    """L_max: answers longer than this get -penalty (0: the generation budget, max_new_tokens, x max_turns with
    env: an episode's model tokens are counted together)."""
    buffer: int = 4
    """L_cache: the penalty ramps linearly from 0 to -penalty over the last `buffer` tokens before max_tokens."""
    penalty: float = 1.0
    """Size of the full penalty."""


@dataclass
class PolicyGradientConfig(RLConfig):
    """`alignlab grpo` (and, with other defaults, `alignlab ppo`): clipped policy-gradient updates."""

    estimator: Estimator = "grpo"
    """Advantages: gae (PPO with a critic), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo: divide centred rewards by the group std (GRPO), the batch std, or not at all (Dr. GRPO)."""
    policy_loss: Literal["ppo_clip", "gspo", "cispo"] = "ppo_clip"
    """Objective (losses/policy.py registry): ppo_clip (PPO, DAPO clip-higher via epsilon_high), gspo (sequence-level
    ratio, Zheng et al. 2025), cispo (clipped stop-gradient IS weight, no token dropped; MiniMax-M1)."""
    mini_batch_size: int = 0
    """Sequences per optimizer step inside a rollout (0: the whole rollout, one step per epoch = on-policy)."""
    ppo_epochs: int = 1
    """Passes over each rollout; >1 reuses samples (the ratio clip then matters)."""
    epsilon_low: float | None = None
    """Lower ratio clip 1 - epsilon_low (Schulman et al. 2017, Eq. 7); null: the objective's paper value
    (ppo_clip 0.2, gspo 3e-4, cispo 1.0 = no lower bound)."""
    epsilon_high: float | None = None
    """Upper ratio clip 1 + epsilon_high (DAPO Eq. 10: 0.28); null: paper value (ppo_clip 0.2, gspo 4e-4, cispo 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (Ye et al. 2020); null disables."""
    kl_coef: float = 0.05
    """KL-to-reference coefficient beta (start value when adaptive_kl); 0 skips the reference forward."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman 2020): k1 for a shaped reward, k3 (or k2) as a loss term; metrics log it as kl_<name>."""
    kl_in_reward: bool = False
    """true: subtract beta*KL from the reward (InstructGPT/PPO); false: add beta*KL to the loss (GRPO)."""
    adaptive_kl: bool = False
    """Adapt beta toward kl_target (Ziegler et al. 2019, Eq. 2) instead of keeping it fixed."""
    kl_target: float = 6.0
    """Target sequence KL (nats) for adaptive_kl."""
    kl_horizon: int = 10000
    """Samples over which adaptive_kl moves beta by its full clipped error."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (Schulman et al. 2017, Eq. 9); 0 disables (entropy is still logged)."""
    loss_agg: LossAgg | None = None
    """How token losses reduce: token-mean = token-sum-norm (DAPO's token-level sum over the whole minibatch: every
    token weighs the same however micro-batches split it), seq-mean-token-mean (GRPO paper),
    seq-mean-token-sum-norm (Dr. GRPO: each answer's sum over the generation budget, max_new_tokens, x max_turns
    with env). null: the policy_loss's own (token-mean for ppo_clip and cispo, seq-mean-token-mean for gspo)."""
    overlong: OverlongConfig | None = None
    """DAPO soft overlong punishment {max_tokens, buffer, penalty}, added to the reward; null: off."""
    mask_truncated: bool = False
    """Answers cut at max_new_tokens carry no loss (DAPO's overlong filtering)."""
    length_penalty: Literal["none", "kimi"] = "none"
    """kimi: Kimi k1.5's length reward in a group (Sec. 2.3.3): +-0.5 by length for right answers, <= 0 for wrong."""
    whiten_advantages: bool = True
    """Whiten GAE advantages over the rollout (PPO practice); grouped estimators are already normalised."""
    gamma: float = 1.0
    """Discount for gae and reinforce_pp (1.0 is standard for LM episodes)."""
    lam: float = 0.95
    """GAE lambda (of the policy's advantages)."""
    lam_critic: float | None = None
    """Decoupled GAE (VAPO, Yuan et al. 2025): lambda of the critic's returns (1.0 in the paper); null = lam."""
    lam_alpha: float | None = None
    """Length-adaptive policy lambda max(0, 1 - 1/(lam_alpha * length)) per answer (VAPO Eq. 7, alpha 0.05); null: lam."""
    value_warmup_steps: int = 0
    """gae: the first N steps train only the critic; the policy starts moving once its values are meaningful (VAPO)."""
    value_model: str | None = None
    """Critic for estimator gae: a model/scorer path; null starts it from the policy's model with a new head."""
    value_learning_rate: float = 1e-5
    """Critic learning rate (its own AdamW, same schedule as the policy's)."""
    value_clip: float | None = 0.2
    """Clip of the value update around the rollout values; null disables."""
    old_logprobs: Literal["sampler", "forward"] = "sampler"
    """Old-policy log-probs from the sampler (free) or the trainer (bit-identical to training math): a separate no-grad
    forward, or the update's own when the rollout gets one optimizer step (ppo_epochs 1, one minibatch, one process)."""
    rollout_is: Literal["none", "tis", "mis"] = "none"
    """Sampler/trainer mismatch correction (Yao et al. 2025) for samples from other weights or kernels (bf16, an
    external engine): the ratio uses the trainer's old log-probs and each token's loss is weighted by trainer/sampler
    probability, truncated at rollout_is_cap (tis) or dropped above it (mis); rollout_kl_k3 logs the mismatch."""
    rollout_is_cap: float = 2.0
    """Cap of the rollout_is weight (> 1)."""
    env: Literal["calculator", "python"] | None = None
    """Multi-turn tool environment (rl/envs/): calculator (safe arithmetic) or python (the code sandbox). Each prompt is
    played for up to max_turns turns of max_new_tokens; tool calls use the chat template's tool format, replies come
    back as tool messages, only the model's tokens carry loss; the final answer is scored by `reward`."""
    max_turns: int = 4
    """Most assistant turns of an env episode (the last one is scored whatever it holds)."""
    env_options: dict[str, Any] = field(default_factory=dict)
    """Options of the env, e.g. {timeout_s: 5} for python or {max_tool_output: 500} (the reward and max_turns: above)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling (Yu et al. 2025, Sec. 3.2): groups whose rewards are all equal carry no signal; drop them
    and sample more prompts until batch_size groups have spread (a shorter batch after max_resample_rounds)."""
    max_resample_rounds: int = 3
    """Extra sampling rounds dynamic_sampling may take per step."""

    def validate(self) -> None:
        super().validate()
        from alignlab.losses.advantages import get_estimator  # torch: only when validating

        spec = get_estimator(self.estimator)
        if spec.grouped and self.num_generations < 2:
            raise ConfigError(f"num_generations: {self.estimator} needs >= 2 samples per prompt, "
                              f"got {self.num_generations}")
        n = self.batch_size * self.num_generations
        mb = self.mini_batch_size or n
        if n % mb or mb % self.grad_accum:
            raise ConfigError(f"mini_batch_size ({mb}) must divide the rollout ({self.batch_size} prompts x "
                              f"{self.num_generations} samples = {n}) and be a multiple of grad_accum "
                              f"({self.grad_accum})")
        if self.mini_batch_size < 0:  # n % -4 == 0 passed the check above, then range(0, n, -4) trained nothing
            raise ConfigError(f"mini_batch_size: must be >= 0 (0: the whole rollout), got {self.mini_batch_size}")
        if self.ppo_epochs < 1:
            raise ConfigError(f"ppo_epochs: must be >= 1, got {self.ppo_epochs}")
        ranges = {"kl_coef": (self.kl_coef, 0.0, None), "entropy_coef": (self.entropy_coef, 0.0, None),
                  "gamma": (self.gamma, 0.0, 1.0), "lam": (self.lam, 0.0, 1.0), "lam_critic": (self.lam_critic, 0.0, 1.0),
                  "lam_alpha": (self.lam_alpha, 0.0, None),
                  "value_learning_rate": (self.value_learning_rate, 0.0, None),
                  "max_turns": (self.max_turns, 1, None), "max_resample_rounds": (self.max_resample_rounds, 0, None),
                  "value_warmup_steps": (self.value_warmup_steps, 0, None)}
        for name, (value, low, high) in ranges.items():
            if value is not None and (value < low or (high is not None and value > high)):
                raise ConfigError(f"{name}: must be in [{low}, {'inf' if high is None else high}], got {value}")
        if any(e is not None and e < 0 for e in (self.epsilon_low, self.epsilon_high, self.value_clip)) or \
                (self.dual_clip is not None and self.dual_clip <= 1):  # else met at the first update, after sampling
            raise ConfigError(f"epsilon_low, epsilon_high and value_clip must be >= 0 and dual_clip > 1, got "
                              f"{self.epsilon_low}, {self.epsilon_high}, {self.value_clip}, {self.dual_clip}")
        if self.overlong is not None:  # DAPO Eq. 13: 0 < L_cache < L_max (else met after the first sampling)
            o = self.overlong
            if o.max_tokens < 0 or o.penalty < 0 or not 0 < o.buffer < (o.max_tokens or self.response_budget()):
                raise ConfigError(f"overlong: need max_tokens >= 0, penalty >= 0 and 0 < buffer < max_tokens (or "
                                  f"the generation budget {self.response_budget()} when max_tokens is 0), got {o}")
        if self.length_penalty == "kimi" and self.num_generations < 2:  # its min/max are over a prompt's answers
            raise ConfigError("length_penalty kimi: compares the answers to one prompt; needs num_generations >= 2")
        from alignlab.losses.policy import get_policy_loss

        if self.dual_clip is not None and not get_policy_loss(self.policy_loss).supports_dual_clip:
            raise ConfigError(f"dual_clip: {self.policy_loss} has no dual clip")
        if self.env is not None and self.rollout_engine is not None:
            raise ConfigError("env: multi-turn episodes are sampled in-process; drop rollout_engine")
        if {"reward", "max_turns"} & set(self.env_options):  # two places for one setting: say which one counts
            raise ConfigError("env_options: reward and max_turns are the run's top-level keys of those names")
        if self.dynamic_sampling and not spec.grouped:
            raise ConfigError(f"dynamic_sampling: needs a grouped estimator (grpo, dr_grpo, rloo, ...), not {self.estimator}")
        if self.rollout_is != "none" and not self.rollout_is_cap > 1:
            raise ConfigError(f"rollout_is_cap: must be > 1, got {self.rollout_is_cap}")
        self._refuse_unused_keys(spec)
        if self.adaptive_kl and not (self.kl_coef > 0 and self.kl_target > 0 and self.kl_horizon >= 1):
            raise ConfigError(f"adaptive_kl: needs kl_coef > 0 (its updates multiply it), kl_target > 0 and kl_horizon "
                              f">= 1, got {self.kl_coef}, {self.kl_target}, {self.kl_horizon}")

    def _refuse_unused_keys(self, spec: Any) -> None:
        """Keys set away from their defaults that nothing reads (value_model=... quietly trained without the critic
        it named): the critic's and GAE's without a critic, the discount where nothing is discounted, scale_rewards
        outside grpo, a switch's own settings with the switch off."""
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(self)}

        def changed(keys: list[str]) -> list[str]:
            return [k for k in keys if getattr(self, k) != defaults[k]]

        critic = ["value_model", "value_learning_rate", "value_clip", "value_warmup_steps", "lam", "lam_critic",
                  "lam_alpha", "whiten_advantages"]
        unused = [] if spec.needs_critic else list(critic)
        if self.estimator not in ("gae", "reinforce_pp", "reinforce_pp_baseline"):
            unused.append("gamma")
        if self.estimator != "grpo":
            unused.append("scale_rewards")
        if changed(unused):  # the critic named only where one of its keys is among them
            hint = ", which has no critic (estimator gae has one)" if set(changed(critic)) & set(unused) else ""
            raise ConfigError(f"{', '.join(changed(unused))}: not used by estimator {self.estimator}{hint}")
        for keys, switch, on in ((["kl_target", "kl_horizon"], "adaptive_kl: true", self.adaptive_kl),
                                 (["kl_estimator", "reference"], "kl_coef > 0 (no reference, no KL)", self.kl_coef > 0),
                                 (["rollout_is_cap"], "rollout_is: tis or mis", self.rollout_is != "none"),
                                 (["max_resample_rounds"], "dynamic_sampling: true", self.dynamic_sampling),
                                 (["env_options", "max_turns"], "an env", self.env is not None)):
            if not on and changed(keys):
                raise ConfigError(f"{', '.join(changed(keys))}: only used with {switch}")

    def response_budget(self) -> int:
        """Most model tokens an answer can hold: max_new_tokens, times max_turns for an env episode."""
        return self.max_new_tokens * (self.max_turns if self.env else 1)


@dataclass
class PPOConfig(PolicyGradientConfig):
    estimator: Estimator = "gae"
    """Advantages: gae (critic, PPO proper) or any critic-free estimator."""
    kl_in_reward: bool = True
    """PPO shapes -beta*KL into the per-token reward (InstructGPT)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """k1 = log pi - log ref per token, the shaped-reward estimator; metrics log it as kl_<name>."""
    num_generations: int = 1
    """Samples per prompt; PPO with a critic needs no groups."""


@dataclass
class OnlineDPOConfig(RLConfig):
    """`alignlab online-dpo`: sample answers, rank them by the reward, one DPO-family step on best vs worst."""

    learning_rate: float = 5e-6
    """Policy learning rate (TRL 1.16's OnlineDPOConfig defaults to 5e-7; this one moves the short built-in runs)."""
    num_generations: int = 2
    """Answers sampled per prompt; the best and the worst by reward form the pair."""
    loss: list[str] = field(default_factory=lambda: ["dpo"])
    """Paired preference loss(es) from the registry (dpo, ipo, simpo, ..., or a mix such as [dpo, sft])."""
    loss_weights: list[float] | None = None
    """Weights of a loss mix (default 1 each)."""
    loss_params: dict[str, Any] = field(default_factory=dict)
    """Per-loss parameters, e.g. {ipo: {...}}."""
    beta: float | None = None
    """DPO beta: strength of the implicit KL to the reference; null: the loss's own default (0.1 for dpo, 2.0 for
    simpo, ...), as offline `alignlab dpo`."""

    def validate(self) -> None:
        super().validate()
        if self.beta is not None and self.beta <= 0:
            raise ConfigError(f"beta: must be positive, got {self.beta}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations: online DPO needs >= 2 answers per prompt, got {self.num_generations}")
        from alignlab.losses import combine  # torch: only when validating

        if self.reference != "auto" and not combine(self.loss, self.loss_weights, self.loss_params).needs_reference:
            raise ConfigError(f"reference: no chosen loss ({', '.join(self.loss)}) uses a reference")


@dataclass
class DistillConfig(OnPolicyConfig):
    """`alignlab distill`: on-policy distillation (GKD): the student (`model`) samples, the loss is a per-token
    divergence to the teacher on the student's own tokens (over the whole vocabulary, or estimated on the sampled
    token for a teacher behind an endpoint)."""

    teacher: str | RemoteTeacher = "smollm2-135m-instruct"
    """Teacher model (alias, directory or hub id), or an OpenAI-compatible endpoint that returns prompt token
    log-probs: {url, model, api_key_env, timeout} or just its URL (http://...); an endpoint needs kl_estimator:
    sampled and temperature 1. It must share the student's tokenizer (vocabulary)."""
    beta: float = 1.0
    """Generalised JSD (Agarwal et al. 2024, Eq. 2): 1 = reverse KL(student || teacher), 0 = forward KL, between:
    the JSD mixture. kl_estimator sampled estimates the reverse KL only (beta 1)."""
    kl_estimator: Literal["full", "sampled"] = "full"
    """full: the divergence of the two next-token distributions over the whole vocabulary (exact at each
    position; needs a local teacher); sampled: the reverse KL estimated on the student's sampled token from the
    two log-probs of that token (k1, trained as a stop-gradient per-token reward: unbiased, noisier; what a
    remote teacher allows)."""
    num_generations: int = 1
    """Samples per prompt."""
    learning_rate: float = 1e-4
    """Student learning rate."""
    eval_prompts: int = 32
    """At most this many held-out prompts are sampled at temperature / top_p (a fixed seed) at each evaluation
    and scored by eval_kl, the divergence to the teacher on the student's own samples (0 disables evaluation)."""

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta: must be in [0, 1], got {self.beta}")
        if self.kl_estimator == "sampled" and self.beta != 1.0:
            raise ConfigError(f"kl_estimator sampled estimates the reverse KL (beta 1) only; beta {self.beta} (the "
                              "generalised JSD or the forward KL) needs the teacher's whole distribution: kl_estimator full")
        remote = remote_teacher(self.teacher)
        if remote is not None and self.kl_estimator != "sampled":
            raise ConfigError(f"teacher {remote.url} is an endpoint, which returns the log-prob of each sampled token "
                              "only; the generalised JSD (kl_estimator full) needs the teacher's whole distribution "
                              "at every position: set kl_estimator=sampled (reverse KL), or load the teacher locally")
        if self.kl_estimator == "sampled" and self.top_p < 1.0:
            # the k1 estimate is unbiased for tokens drawn from the student's whole softmax; nucleus sampling draws
            # from a truncated one (top_p 0.2: +0.21 nats against the exact KL)
            raise ConfigError(f"top_p: kl_estimator sampled needs samples from the student's whole distribution "
                              f"(top_p 1), got {self.top_p}")
        if remote is not None and self.temperature != 1.0:
            raise ConfigError(f"teacher {remote.url}: an endpoint's prompt log-probs are at temperature 1; sample "
                              f"at temperature 1 (got {self.temperature}) or load the teacher locally")
