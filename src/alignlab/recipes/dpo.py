"""`alignlab dpo`: the DPO family (dpo, ipo, simpo, orpo, kto, ...) on preference or unpaired data.

Wiring only: rows from `data.sources` (task "preference", or "unpaired" when the loss is; paired
files are unpaired automatically for kto) split by `data.prepare`, token ids from `data.tokenize` (joint
prompt+completion tokenisation, EOS on plain text), batches from `data.pairs` in the chosen forward path,
the reference from `train.reference` as the LossMix's `needs_reference` asks, the step from
`train.preference` (assembled in `train.dpo`, where `DPOConfig` lives), the loop.
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import AlignlabError
from alignlab.train.dpo import DPOConfig

__all__ = ["DPOConfig", "load_split", "run"]


def load_split(cfg: DPOConfig, task: str, records: list | None = None, eval_records: list | None = None) -> Any:
    """The data.prepare.Split of the task's rows: eval from eval_data or a seeded held-out split; in-memory
    `records` / `eval_records` (the Python API) replace the files."""
    from alignlab.data.prepare import load_task_rows, run_split

    if not cfg.data and records is None:
        raise AlignlabError("data: give a preference file, e.g. data=../shared/data/llamafactory_demo/dpo_en_demo.json")
    return run_split(cfg, lambda src: load_task_rows(src, task, data_format=cfg.data_format, columns=cfg.columns,
                                                     on_bad_row=cfg.on_bad_row), records, eval_records)


def _summary(result: Any, cfg: DPOConfig) -> dict[str, float]:
    last = dict(result.evals[-1]) if result.evals else {}
    last.pop("step", None)
    pairs_s = (result.step - result.start_step) * cfg.batch_size / max(result.train_runtime, 1e-9)  # this call's
    return {"pairs_per_second": round(pairs_s, 3), **{k: round(v, 4) for k, v in last.items()}}


def run(cfg: DPOConfig, *, model: Any = None, tokenizer: Any = None, ref_model: Any = None,
        rows: list | None = None, eval_rows: list | None = None, callbacks: Any = ()):
    """Train and return the loop's TrainResult; the model lands in cfg.output_dir. alignlab.api passes an
    in-memory policy + tokenizer, reference model and records (used instead of cfg.model, ref_model, data)."""
    import torch

    from alignlab.config import saved_config_text
    from alignlab.data.mixture import data_label
    from alignlab.data.pairs import PairCollator, unpaired_as_pairs
    from alignlab.losses import combine
    from alignlab.models.attention import uses_spans
    from alignlab.models.layouts import pair_layout
    from alignlab.models.prepare import prepare_model
    from alignlab.train.dpo import cached_sets, check_unpaired_group, dpo_examples, preference_step
    from alignlab.train.loop import evaluate, seed_everything, train
    from alignlab.train.reference import choose_reference_kind
    from alignlab.train.world import World

    mix = combine(cfg.loss, cfg.loss_weights, cfg.loss_params)
    cfg.check_reference_keys(mix.needs_reference, ref_model is not None)
    world = World.for_run(cfg)
    check_unpaired_group(cfg, world.size)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    tokenizer, policy = prepare_model(cfg) if model is None else (tokenizer, model)
    split = load_split(cfg, "preference" if mix.paired else "unpaired", rows, eval_rows)
    rows, eval_rows = split.train, split.scored
    train_set = dpo_examples(rows, tokenizer, cfg, data_label(cfg.data), mix.paired)
    eval_set = dpo_examples(eval_rows, tokenizer, cfg, cfg.eval_data or "held-out", mix.paired) if eval_rows else []
    if not mix.paired:  # donors fixed before training, in groups of a micro-batch's size: the same on any world size
        group = cfg.micro_batch_size()
        train_set = unpaired_as_pairs(train_set, group, cfg.max_length)
        eval_set = unpaired_as_pairs(eval_set, group, cfg.max_length) if eval_set else []
    layout = pair_layout(cfg.forward_path, policy)  # where a model cannot take the asked one, the one it can
    collate = PairCollator(tokenizer.pad_token_id, layout, row_tokens=cfg.row_tokens or None,
                           pad_to_multiple_of=cfg.pad_to_multiple_of, spans=uses_spans(policy))
    kind = choose_reference_kind(cfg.reference, mix.needs_reference, policy, bool(cfg.ref_model or ref_model is not None))
    if kind == "cache":
        train_set, eval_set = cached_sets(cfg, [train_set, eval_set], policy, collate, world.device)
    # the reference's weights: the given model, the config's names, or (an in-memory policy) its own start
    source = ref_model if ref_model is not None else (cfg.ref_model or (cfg.model if model is None else None))
    step_fn = preference_step(cfg, mix, kind, policy, source)
    print(f"dpo: loss {list(mix.names)} beta {step_fn.beta}, reference {kind}, forward path {layout}, "
          f"{len(train_set)} train / {len(eval_set)} eval examples", flush=True)

    def eval_fn(model: Any) -> dict[str, float]:
        # the batch of one process whatever the world size (each rank evaluates the whole set): KTO's means and an
        # sft term's token mean are per batch, and the world's micro-batch moved them with the number of ranks
        return evaluate(model, step_fn, eval_set, collate, batch_size=cfg.micro_batch_size(), device=world.device,
                        cfg=cfg)

    result = train(cfg, policy, step_fn, train_set, collate, eval_fn=eval_fn if eval_set else None,
                   tokenizer=tokenizer, world=world, config_yaml=saved_config_text(cfg) if world.is_main else None,
                   unit="pairs" if mix.paired else "samples", callbacks=callbacks, split=split)
    if world.is_main:
        print(f"dpo done: {result.done_line()}; {_summary(result, cfg)}; "
              f"model in {cfg.output_dir}", flush=True)
    return result
