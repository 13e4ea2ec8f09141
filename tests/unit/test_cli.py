import subprocess
import sys

from alignlab.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "alignlab" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "alignlab", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout


def test_help_lists_the_keys_of_nested_configs(capsys):
    """`alignlab eval --help` named EvaluationSpec and listed none of its keys (data_offset, samples, judge.base_url,
    ...); every config a command's config holds (one, an optional one, a list of them) is described."""
    import pytest

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for header in ("keys of evaluations (EvaluationSpec):", "keys of evaluations.judge (JudgeConfig):",
                   "keys of evaluations.sampling (SamplingConfig):"):
        assert header in out
    assert "  data_offset (int, default 0)" in out and "  base_url (str | None, default None)" in out
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = capsys.readouterr().out
    assert "keys of rollout_engine (RemoteEngine):" in out and "keys of lora (LoraConfig):" in out
