"""The console script is installed and runs its sub-commands."""
import subprocess
import sys
from pathlib import Path
from dnallm_nb.testing import golden_path


def test_console_script_demo_writes_report(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "r"), "--n-sequences", "20", "--window", "32",
                             "--finetune-sequences", "20", "--finetune-window", "32"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "report written to" in result.stdout and "RC symmetry**: PASSED" in result.stdout
    assert "`dnallm-nb/plant-caduceus-ps-tiny`, the bundled pretrained demo model" in result.stdout  # the default model
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"summary.md", "layer_curve.png", "layer_probe.csv",
                                                           "finetune.csv", "finetune.png"}
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert summary == result.stdout.split("report written to")[0].rstrip("\n") + "\n"  # what it prints is the summary
    lines = {line.split("**")[1]: line for line in summary.splitlines() if line.startswith("- **")}
    assert "beats k-mers: " in lines["LoRA fine-tune"] and "beats k-mers: " in lines[next(k for k in lines if k.startswith("frozen probe"))]
    table = __import__("pandas").read_csv(tmp_path / "r" / "finetune.csv", index_col=0)
    assert list(table.index[1:-1]) == ["LoRA fine-tune"] and table.index[0].startswith("probe, layer ") and table.index[-1].endswith("-mers")
    lora = table.loc["LoRA fine-tune"]
    assert "on 20 windows of 32 bp" in lines["LoRA fine-tune"] and "up to 150 steps" in lines["LoRA fine-tune"]
    assert f"auroc {lora.auroc:.3f} ± {lora.auroc_sd:.3f}" in lines["LoRA fine-tune"]
    assert f"above on {int(lora.folds_above)}/5 folds" in lines["LoRA fine-tune"]
    verdict = "yes" if lora["diff"] - lora.diff_sd > 0 else "no"
    assert f"**beats k-mers: {verdict}" in lines["LoRA fine-tune"]


def test_console_script_rejects_unknown_command():
    exe = Path(sys.executable).with_name("dnallm-nb")
    result = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


GOLDEN = golden_path()


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


def test_console_script_score_variants_writes_scores_and_names_bad_rows(tmp_path: Path):
    exe = Path(sys.executable).with_name("dnallm-nb")
    (tmp_path / "g.fa").write_text(">chr1\nACGTACGTTGCAACGTAGCTAGGCTTAACG\n")
    header = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    (tmp_path / "v.vcf").write_text(header + "chr1\t3\tv1\tG\tA\t.\t.\t.\nchr1\t10\tv2\tG\tT\t.\t.\t.\n")
    command = [str(exe), "score-variants", "--model", str(GOLDEN / "caduceus-ps-tiny"), "--genome", str(tmp_path / "g.fa"),
               "--out", str(tmp_path / "scores.tsv"), "--no-progress", "--vcf"]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command + [str(tmp_path / "v.vcf")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "scored 2 variants into" in result.stdout
    lines = (tmp_path / "scores.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:6] == ["chrom", "pos", "id", "ref", "alt", "llr"] and len(lines) == 3
    (tmp_path / "bad.vcf").write_text(header + "chr1\t3\tv1\tG\tA\t.\t.\t.\nchr1\t10\tv2\tG\t<DEL>\t.\t.\t.\n")
    result = subprocess.run(command[:-3] + [str(tmp_path / "bad.tsv"), "--no-progress", "--vcf", str(tmp_path / "bad.vcf")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "row 1 (chr1:10 G><DEL>, id v2) has the symbolic ALT '<DEL>'" in result.stderr


def test_module_form_runs_the_same_cli():  # what `torchrun -m dnallm_nb.cli ...` executes
    result = subprocess.run([sys.executable, "-m", "dnallm_nb.cli", "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = subprocess.run([sys.executable, "-m", "dnallm_nb.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("dnallm_nb ")
