"""LoRA and QLoRA through peft, the disabled adapter as the reference model, and merging adapters.

LoRA (Hu et al. 2021, eq. 3): h = W0 x + (alpha / r) * B A x with A: [r, in], B: [out, r], B initialised to 0,
so the adapted model starts exactly at the base model and only A, B train. QLoRA (Dettmers et al. 2023)
keeps W0 in 4-bit NF4 (bitsandbytes, CUDA only) and trains the same A, B in higher precision.

Disabling the adapter gives back W0 exactly, so a LoRA policy's own base serves as the frozen reference
for DPO/KL terms with no second copy of the model in memory (as torchtune's `disable_adapter`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LLAMA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank: size of the low-rank update B A; more capacity and memory as it grows (8-64 is typical)."""
    alpha: float = 32
    """Scaling numerator: the update is multiplied by alpha / r (so changing r keeps the step size similar)."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training (0 disables; the base path never has dropout added)."""
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGET_MODULES))
    """Names of the linear layers that get adapters (defaults fit Llama, Mistral, Qwen and SmolLM2; all-linear
    picks every linear layer but the output head)."""
    qlora: bool = False
    """Load the base weights in 4-bit NF4 via bitsandbytes and train LoRA on top (needs CUDA)."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise AlignlabError(f"lora.r: must be a positive integer, got {self.r}")
        if not self.alpha > 0:  # the update is (alpha / r) B A: 0 trains nothing, a negative one flips its sign
            raise AlignlabError(f"lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise AlignlabError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise AlignlabError("lora.target_modules: must name at least one module (or all-linear)")


def qlora_available() -> str | None:
    """None when QLoRA can run here, else the reason it cannot."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available. Use plain LoRA (qlora: false)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs the bitsandbytes package: pip install bitsandbytes (or use plain LoRA, qlora: false)"
    return None


def qlora_quantization_config() -> Any:
    """The QLoRA paper's base quantisation: NF4 with double quantisation, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _is_4bit(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False)) or getattr(
        getattr(model, "config", None), "quantization_config", None
    ) is not None


def _is_scorer(model: Any) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def apply_lora(model: PreTrainedModel, cfg: LoraConfig) -> Any:
    """Wrap `model` with fresh LoRA adapters (a peft model; only adapter weights are trainable).

    With `cfg.qlora` the base must sit in 4-bit: a model already loaded with `qlora_quantization_config()`
    is used as is, otherwise it is reloaded in 4-bit from its checkpoint directory (on GPU 0). Scorer models (reward,
    value) also train their scalar head. Raises AlignlabError when QLoRA cannot run here.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from alignlab.models.prepare import is_peft

    if is_peft(model):
        # get_peft_model on a loaded adapter resets it, and the new adapter would be saved against the bare base
        # (peft records one base, not base + adapter)
        raise AlignlabError("lora: the model already carries a LoRA adapter (model: names an adapter folder); to train "
                            "a new adapter on it, fold it into its base first (`alignlab merge ADAPTER_DIR MERGED_DIR`,"
                            " then model: MERGED_DIR), or drop lora: to fine-tune base + adapter in full")
    if cfg.qlora:
        reason = qlora_available()
        if reason:
            raise AlignlabError(f"lora.qlora: {reason}")
        model = _as_4bit(model)
    targets: Any = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    names = [n for n, _ in model.named_modules()]
    # peft matches a list by name suffix and fails only when no name matches: a typo beside a good name, or
    # all-linear beside another name (which then stood for nothing), was dropped silently
    unmatched = [t for t in ([] if targets == "all-linear" else targets)
                 if t == "all-linear" or not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise AlignlabError(f"lora.target_modules: {unmatched} match no module of this model (all-linear stands "
                            f"alone); its linear layers are named {linear}")
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="SEQ_CLS" if _is_scorer(model) else "CAUSAL_LM",
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise AlignlabError(
            f"lora.target_modules: {cfg.target_modules} do not match this model ({e}); its linear layers are "
            f"named {linear}"
        ) from e
    for adapter_cfg in peft_model.peft_config.values():  # written to adapter_config.json on save
        adapter_cfg.base_model_name_or_path = portable_name(adapter_cfg.base_model_name_or_path or "")
    return peft_model


def portable_name(name_or_path: str) -> str:
    """The base-model name an adapter records: an alias (tiny-random, smollm2-135m-instruct) for a folder of
    alignlab's alias cache, since that path is this user's and `load_model` resolves the alias anywhere;
    any other name (hub id, the user's own directory) unchanged."""
    from alignlab.models.load import _ALIAS_DIRS, cache_dir

    if not name_or_path:
        return name_or_path
    path = Path(name_or_path).expanduser()
    models = (cache_dir() / "models").resolve()
    if path.parent.resolve() == models:
        for alias, dirname in _ALIAS_DIRS.items():
            if path.name.startswith(dirname):
                return alias
    return name_or_path


def _as_4bit(model: Any) -> Any:
    from peft import prepare_model_for_kbit_training

    if not _is_4bit(model):
        from alignlab.models.heads import load_scorer
        from alignlab.models.load import load_model

        source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not source or not Path(source).is_dir():
            raise AlignlabError(
                "lora.qlora: the model must be loaded in 4-bit (load_model(name, "
                "quantization_config=qlora_quantization_config(), device_map={'': 0})) or come from a local "
                "checkpoint directory it can be reloaded from"
            )
        # reloaded from disk: weights changed in memory since loading (e.g. a fresh scorer head) are not kept
        loader = load_scorer if _is_scorer(model) else load_model
        model = loader(source, quantization_config=qlora_quantization_config(), device_map={"": 0})
    # casts norms to fp32 and enables input grads so LoRA on a frozen 4-bit base trains stably
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def has_adapter(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel) or bool(getattr(model, "peft_config", None))


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Inside the block, `model` computes exactly its base model (LoRA updates switched off): the reference
    model for DPO/KL terms without a second copy. Run reference forwards under torch.no_grad() in eval mode.
    Raises AlignlabError when `model` has no adapter (a separate reference model is needed then)."""
    if not has_adapter(model):
        raise AlignlabError(
            "adapter_disabled: the model has no LoRA adapter, so disabling it would not give a reference model; "
            "load a separate reference model (or train with lora)"
        )
    with model.disable_adapter():
        yield model


def save_base_weights(model: Any, out_dir: str | Path) -> Path:
    """The weights a peft model's adapters sit on, without them, as a plain HF checkpoint: an in-memory base (trained
    or edited in this process) that no folder holds, for its adapter_config.json to name."""
    base = model.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    base.save_pretrained(out_dir, state_dict=state)
    return Path(out_dir)


def merge_lora(model: Any) -> Any:
    """peft's `merge_and_unload`, with a tied input embedding and output head untied first when an adapter sits on
    either: folding B A into the one shared tensor changed both ends of the model, while the adapter had changed
    one (merged logits off by 20-110 on tiny-random; peft only warns). The merged model then keeps two tensors and
    `tie_word_embeddings: false`."""
    import torch

    base = model.get_base_model()
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    emb_w, head_w = (getattr(getattr(m, "base_layer", m), "weight", None) for m in (emb, head))
    adapted = any(hasattr(m, "base_layer") for m in (emb, head))
    if adapted and emb_w is not None and emb_w is head_w:
        layer = getattr(head, "base_layer", head)
        layer.weight = torch.nn.Parameter(emb_w.detach().clone(), requires_grad=emb_w.requires_grad)
        for config in {id(c): c for c in (base.config, base.config.get_text_config())}.values():
            config.tie_word_embeddings = False
    return model.merge_and_unload()


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32",
                  allow_pickle: bool = False) -> Path:
    """Fold a saved LoRA adapter into its base weights and write a plain HF checkpoint (safetensors) plus
    the tokenizer to `out_dir`, loadable by `AutoModelForCausalLM.from_pretrained` (or, for a reward/value
    adapter, `AutoModelForSequenceClassification`), with the run's split.json (the adapter's folder's, or the run's
    above a checkpoint-N). The output appears complete or not at all."""

    from peft import PeftModel

    from alignlab.models.load import adapter_base, load_model, load_tokenizer

    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise AlignlabError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json)")
    base_name, task = adapter_base(adapter_dir, allow_pickle)  # before peft unpickles anything
    if out_dir.exists() and any(out_dir.iterdir()):
        raise AlignlabError(f"{out_dir}: output directory exists and is not empty; choose a new one")
    if task == "SEQ_CLS":
        from alignlab.models.heads import load_scorer

        base = load_scorer(base_name, dtype=dtype)
    else:
        base = load_model(base_name, dtype=dtype)
    merged = merge_lora(PeftModel.from_pretrained(base, str(adapter_dir)))
    tok_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base_name
    tokenizer = load_tokenizer(tok_source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # what the run trained on goes with its weights: eval warns when it scores those rows (eval/leakage.py)
        run_dir = adapter_dir.parent if adapter_dir.name.startswith("checkpoint-") else adapter_dir
        for split in (adapter_dir / "split.json", run_dir / "split.json"):
            if split.is_file():
                shutil.copyfile(split, tmp / "split.json")
                break
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
