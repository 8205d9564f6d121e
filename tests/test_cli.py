"""The console script is installed and runs its sub-commands."""
import subprocess
import sys
from pathlib import Path


def test_console_script_demo_writes_report(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "report written to" in result.stdout
    assert (tmp_path / "r" / "README.md").exists()


def test_console_script_rejects_unknown_command():
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
