"""Callbacks: code the training loop calls at its events, in the spirit of `transformers.TrainerCallback`.

    class StopWhenAccurate(Callback):
        def on_eval(self, step, metrics):
            self.good = metrics.get("eval_rewards/accuracies", 0) > 0.9
        def on_step_end(self, step, metrics):
            return getattr(self, "good", False)  # True asks the loop to stop after this step

Events, in the order the loop sends them: `on_train_begin` once; per optimizer step `on_log` (at logging
steps, the metrics.jsonl row), `on_eval` (at evaluations, also before the first step), `on_save` (after a
checkpoint or the final model is written), `on_step_end` (every step; a truthy return requests a stop, which
ends the loop cleanly: the step is logged and evaluated if it was not, then the final model is saved);
`on_train_end` once (with the closing row, or None when the run stopped on an error or `stop_at`).

User callbacks run on every rank with the same (already reduced) metrics; a stop requested on any rank stops
all ranks. The metrics sinks are callbacks too, created on the main rank only: metrics.jsonl and the progress
display (`MetricsSink`), the trackers named by `report_to` (tensorboard, wandb, mlflow, trackio; each
imported only when asked for) and the run report (`ReportSink`, report.html at the end).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["TRACKERS", "Callback", "CallbackList", "MetricsSink", "ReportSink", "check_trackers", "make_trackers"]


class Callback:
    """Override the events you need; every default does nothing."""

    def on_train_begin(self, run_dir: Path, total_steps: int, start_step: int) -> None:
        """Before the first step (`start_step` > 0 when resuming)."""

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        """A logged training row (means since the previous logged step): loss, grad_norm, learning_rate, ..."""

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        """An evaluation's metrics (keys start with `eval_`)."""

    def on_save(self, step: int, path: Path) -> None:
        """A checkpoint (or, at the end, the final model in output_dir) was written to `path`."""

    def on_step_end(self, step: int, metrics: dict[str, Any]) -> bool | None:
        """After optimizer step `step`, before it is logged: `metrics` holds its grad_norm and learning_rate
        (the loss and the rest arrive in `on_log`). Return True to stop training after this step."""
        return None

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        """The loop ended at `step`: `final` is the closing row ({step, train_runtime}), None on an error."""


def _weights_may_have_changed() -> None:
    """A callback may change the weights, through `.data` too (no version bump): the evaluation's kept casts of
    this optimizer step would be reused stale by the next training forward (ops/buffers.py)."""
    from alignlab.ops.buffers import weights_updated

    weights_updated()


class CallbackList(Callback):
    """Sends each event to every callback in order; `on_step_end` is True when any of them asks to stop."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        self.step, self.ended = 0, False
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: {cb!r} is not an alignlab.train.callbacks.Callback")

    @contextmanager
    def ended_on_error(self) -> Iterator[None]:
        """Around a run's steps: any exception (a bad batch, a reward that raises, Ctrl-C) still sends on_train_end
        (None), once, so progress bars stop, trackers close their runs as failed and callbacks learn of it."""
        try:
            yield
        except BaseException:
            self.on_train_end(self.step, None)
            raise

    def on_train_begin(self, run_dir: Path, total_steps: int, start_step: int) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(run_dir, total_steps, start_step)

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_eval(step, metrics)
        _weights_may_have_changed()

    def on_save(self, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_save(step, path)
        _weights_may_have_changed()

    def on_step_end(self, step: int, metrics: dict[str, Any]) -> bool:
        self.step = step
        # Every callback sees the event even when an earlier one already asked to stop.
        return any([bool(cb.on_step_end(step, metrics)) for cb in self.callbacks])

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        if self.ended:  # sent once, whichever path ends the run
            return
        self.ended = True
        for cb in self.callbacks:
            cb.on_train_end(step, final)


class MetricsSink(Callback):
    """metrics.jsonl (one row per logged step and evaluation, a closing row) and the progress display."""

    def __init__(self, logger: Any):
        self.logger = logger  # a train.metrics.MetricsLogger

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        self.logger.log(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        self.logger.log(step, metrics)

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        self.logger.close(final)


class ReportSink(Callback):
    """Writes output_dir/report.html (eval.run_report) when the run ends cleanly."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        if final is None:
            return
        from alignlab.eval.run_report import write_run_report

        print(f"report: {write_run_report(self.run_dir)}", flush=True)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class TensorBoardCallback(Callback):
    """Scalars to output_dir/tensorboard with torch's SummaryWriter (needs the `tensorboard` package)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (missing: refused before the run starts)

        self.folder, self.writer = str(Path(run_dir) / "tensorboard"), None

    def on_train_begin(self, run_dir: Path, total_steps: int, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run redoes the steps after its checkpoint: their points from before the kill are dropped, as
        # metrics.jsonl's rows are (they were written twice)
        self.writer = SummaryWriter(self.folder, purge_step=start_step + 1 if start_step else None)

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)

    on_eval = on_log

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        self.writer.close()


class WandbCallback(Callback):
    """A Weights & Biases run, offline unless WANDB_MODE says otherwise (files under output_dir/wandb).
    Project from WANDB_PROJECT (default alignlab), run name = the output_dir's name, config = the run config."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "alignlab"), name=Path(run_dir).name,
                              dir=str(run_dir), config=config, mode=os.environ.get("WANDB_MODE", "offline"))

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(_scalars(metrics), step=step)

    on_eval = on_log

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        self.run.finish(exit_code=0 if final is not None else 1)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = str(v)
    return out


class MLflowCallback(Callback):
    """An MLflow run in a local file store (output_dir/mlruns) unless MLFLOW_TRACKING_URI names another;
    experiment from MLFLOW_EXPERIMENT_NAME (default alignlab); the run config becomes its params."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir) / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "alignlab"))
        mlflow.start_run(run_name=Path(run_dir).name)
        mlflow.log_params(_flat(config))

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_scalars(metrics), step=step)

    on_eval = on_log

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        self.mlflow.end_run(status="FINISHED" if final is not None else "FAILED")


class TrackioCallback(Callback):
    """A trackio run (local storage unless TRACKIO_SPACE_ID is set); project from TRACKIO_PROJECT
    (default alignlab), run name = the output_dir's name, config = the run config."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "alignlab"), name=Path(run_dir).name, config=config)

    def on_log(self, step: int, metrics: dict[str, Any]) -> None:
        self.trackio.log(_scalars(metrics), step=step)

    on_eval = on_log

    def on_train_end(self, step: int, final: dict[str, Any] | None) -> None:
        self.trackio.finish()


# report_to name -> (module whose presence is required, callback class)
TRACKERS: dict[str, tuple[str, type[Callback]]] = {
    "tensorboard": ("tensorboard", TensorBoardCallback),
    "wandb": ("wandb", WandbCallback),
    "mlflow": ("mlflow", MLflowCallback),
    "trackio": ("trackio", TrackioCallback),
}


def check_trackers(names: Iterable[str]) -> None:
    """Unknown or uninstalled trackers are errors now (config time), not after the model has loaded."""
    from alignlab.config import ConfigError

    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        module = TRACKERS[name][0]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {name} needs the `{module}` package, which is not installed "
                              f"(pip install {module}), or remove it from report_to")


def make_trackers(names: Iterable[str], run_dir: str | Path, config: Any) -> list[Callback]:
    """One callback per tracker name (main rank only); `config` is the run's config dataclass or mapping."""
    from alignlab.config import to_dict

    names = list(dict.fromkeys(names))
    check_trackers(names)
    plain = to_dict(config) if not isinstance(config, dict) else config
    return [TRACKERS[n][1](Path(run_dir), plain) for n in names]


def run_events(cfg: Any, out: Path, world: Any, total_steps: int, start_step: int,
               callbacks: Iterable[Callback] = ()) -> CallbackList:
    """The callbacks of one run: on the main rank metrics.jsonl + progress, the `report_to` trackers and
    report.html; then the user's. Every trainer (train/loop.py, rl/loop.py) starts its run through this."""
    from alignlab.train.metrics import MetricsLogger

    sinks: list[Callback] = []
    if world.is_main:
        logger = MetricsLogger(out, total_steps=total_steps, start_step=start_step, progress=cfg.progress,
                               tensorboard=False)
        sinks = [MetricsSink(logger), *make_trackers(cfg.report_to, out, cfg), ReportSink(out)]
    events = CallbackList([*sinks, *callbacks])
    events.on_train_begin(out, total_steps, start_step)
    return events
