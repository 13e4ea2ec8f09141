import subprocess
import sys

from alignlab.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "alignlab" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "alignlab", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout
