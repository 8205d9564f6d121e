"""The console script is installed and runs its sub-commands."""
import subprocess
import sys
from pathlib import Path


def test_console_script_demo_writes_report(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "r"), "--n-sequences", "20", "--window", "32"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "report written to" in result.stdout and "RC symmetry**: PASSED" in result.stdout
    assert "`dnallm-nb/plant-caduceus-ps-tiny`, the bundled pretrained demo model" in result.stdout  # the default model
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"summary.md", "layer_curve.png", "layer_probe.csv"}


def test_console_script_rejects_unknown_command():
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def test_console_script_embed_writes_resumable_shards(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTAC\n>b\nGGGTTTA\n")
    command = [str(exe), "embed", str(GOLDEN / "caduceus-ps-tiny"), str(fasta), "--out", str(tmp_path / "emb"), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    index = (tmp_path / "emb" / "index.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in index[1:]] == ["a", "b"]


def test_console_script_embed_names_bad_record(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">good\nACGT\n>bad_one\nACXT\n")
    result = subprocess.run([str(exe), "embed", str(GOLDEN / "caduceus-ps-tiny"), str(fasta), "--out", str(tmp_path / "e")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad_one" in result.stderr and "'X'" in result.stderr
