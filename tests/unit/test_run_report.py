"""report.html of a training run: every metric plotted (key curves first), config and timing, overlays."""

import base64
import json
import re
import shutil
import subprocess

import pytest

from alignlab.cli import main
from alignlab.eval.run_report import metric_order, read_run, write_run_report

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(path, scale: float = 1.0, dpo: bool = True):
    path.mkdir(parents=True)
    rows = [{"step": 0, "eval_loss": 0.69 * scale, "eval_rewards/margins": 0.0}]
    for s in (2, 4, 6):
        row = {"step": s, "loss": 0.7 * scale / s, "grad_norm": 1.0 / s, "learning_rate": 1e-3,
               "tokens_per_second": 100.0 * s, "peak_memory_mb": 50.0 + s, "grad_nan": "nan"}
        if dpo:
            row.update({"rewards/margins": 0.1 * s, "rewards/accuracies": 0.5 + 0.05 * s})
        rows.append(row)
    rows.append({"step": 6, "eval_loss": 0.5 * scale, "eval_rewards/margins": 0.4})
    rows.append({"step": 6, "train_runtime": 12.5})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.yaml").write_text("model: tiny-random\nloss:\n- dpo\nbeta: 0.1 # <b>not html</b>\n")
    return path


def images(page: str) -> list[tuple[str, bytes]]:
    return [(alt, base64.b64decode(data)) for alt, data in
            re.findall(r'<img alt="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', page)]


def test_metric_order_puts_each_recipes_key_curves_first():
    dpo = metric_order(["loss", "eval_loss", "grad_norm", "rewards/accuracies", "rewards/margins", "eval_rewards/margins"])
    assert dpo == ["rewards/margins", "rewards/accuracies", "loss", "grad_norm"]
    rl = metric_order(["approx_kl", "kl", "kl_ctl", "reward_mean", "loss", "clipfrac"])
    assert rl == ["reward_mean", "kl", "kl_ctl", "loss", "approx_kl", "clipfrac"]
    sft = metric_order(["grad_norm", "eval_perplexity", "eval_loss", "loss"])
    assert sft == ["loss", "perplexity", "grad_norm"]


def test_read_run_splits_curves_from_the_closing_row_and_skips_non_numbers(tmp_path):
    run = read_run(fake_run(tmp_path / "a"))
    assert run.series["loss"][0] == (2, pytest.approx(0.35))
    assert run.series["eval_loss"] == [(0, 0.69), (6, 0.5)]
    assert "grad_nan" not in run.series and "train_runtime" not in run.series
    assert run.final == {"step": 6, "train_runtime": 12.5}


def test_report_embeds_one_png_per_metric_with_config_and_timing(tmp_path):
    path = write_run_report(fake_run(tmp_path / "run"))
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text()
    imgs = images(page)
    names = [alt for alt, _ in imgs]
    assert names[:3] == ["rewards/margins", "rewards/accuracies", "loss"]
    assert set(names) == {"rewards/margins", "rewards/accuracies", "loss", "grad_norm", "learning_rate",
                          "tokens_per_second", "peak_memory_mb"}
    assert all(png.startswith(PNG) and len(png) > 2000 for _, png in imgs)
    assert "12.5" in page and "train_runtime" in page  # timing
    assert "beta: 0.1 # &lt;b&gt;not html&lt;/b&gt;" in page  # config, escaped
    assert not list((tmp_path / "run").glob("*.tmp")) and "http" not in page.replace("http-equiv", "")


def test_cli_report_overlays_two_runs_into_one_page(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", scale=2.0, dpo=False)
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text()
    assert "alignlab run: a, b" in page and page.count("<h2>") == 2
    one = write_run_report(a, out=tmp_path / "one.html")
    # The overlay draws two runs on the shared axes: its loss plot differs from the single run's.
    assert dict(images(page))["loss"] != dict(images(one.read_text()))["loss"]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no chromium for a real-browser screenshot")
def test_report_renders_in_headless_chromium(tmp_path):
    page = write_run_report(fake_run(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.as_uri()], check=True, timeout=120, capture_output=True)
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 20000  # a blank page compresses to a few KB
