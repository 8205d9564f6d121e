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
    assert result.returncode == 0 and "1 of 2 variant(s) are not scored" in result.stderr  # by default: a status row
    assert [line.split("\t")[4:7] for line in (tmp_path / "bad.tsv").read_text().splitlines()[1:]][1] == ["<DEL>", "", ""]
    result = subprocess.run(command[:-3] + [str(tmp_path / "strict.tsv"), "--no-progress", "--strict", "--vcf", str(tmp_path / "bad.vcf")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "row 1 (chr1:10 G><DEL>, id v2) has the symbolic ALT '<DEL>'" in result.stderr


def test_module_form_runs_the_same_cli():  # what `torchrun -m dnallm_nb.cli ...` executes
    result = subprocess.run([sys.executable, "-m", "dnallm_nb.cli", "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = subprocess.run([sys.executable, "-m", "dnallm_nb.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("dnallm_nb ")


# ---- bad input: one `error:` line naming the fix, exit status 2, no traceback unless --debug ------------------------------

VCF_TEXT = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchr1\t3\tv1\tG\tA\t.\t.\t.\n"


def run_cli(*argv) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dnallm_nb.cli", *map(str, argv)], capture_output=True, text=True, env=env)


def one_error_line(result: subprocess.CompletedProcess, command: str, *expected: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dnallm-nb {command}: error: "), result.stderr
    assert "Traceback" not in result.stderr and all(e in lines[0] for e in expected), lines[0]
    return lines[0]


def test_bad_paths_and_swapped_files_are_named_by_their_argument(tmp_path: Path):
    (tmp_path / "g.fa").write_text(">chr1\nACGTACGTTGCAACGTAGCTAGGCTTAACG\n")
    (tmp_path / "v.vcf").write_text(VCF_TEXT)
    score = ["score-variants", "--model", GOLDEN / "caduceus-ps-tiny", "--no-progress"]
    one_error_line(run_cli(*score, "--genome", tmp_path / "v.vcf", "--vcf", tmp_path / "v.vcf", "--out", tmp_path / "s.tsv"),
                   "score-variants", "--genome", "is a VCF file, not a FASTA file")
    one_error_line(run_cli(*score, "--genome", tmp_path / "g.fa", "--vcf", tmp_path / "g.fa", "--out", tmp_path / "s.tsv"),
                   "score-variants", "--vcf", "is a FASTA file, not a VCF file")
    one_error_line(run_cli(*score, "--genome", tmp_path / "absent.fa", "--vcf", tmp_path / "v.vcf", "--out", tmp_path / "s.tsv"),
                   "score-variants", "--genome", "absent.fa", "does not exist")
    for out in ("s.csv", "s.vcf.zip"):  # refused before any work
        one_error_line(run_cli(*score, "--genome", tmp_path / "g.fa", "--vcf", tmp_path / "v.vcf", "--out", tmp_path / out),
                       "score-variants", "--out", ".tsv, .tsv.gz, .vcf, .vcf.gz, .vcf.bgz, .bcf")
        assert not (tmp_path / f"{out}.parts").exists()
    one_error_line(run_cli("embed", GOLDEN / "caduceus-ps-tiny", tmp_path / "v.vcf", "--out", tmp_path / "e"),
                   "embed", "INPUT", "is a VCF file, not a FASTA file")


def test_bad_fasta_and_checkpoint_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path):
    (tmp_path / "dup.fa").write_text(">alpha\nACGT\n>alpha\nGGGG\n")
    one_error_line(run_cli("embed", GOLDEN / "caduceus-ps-tiny", tmp_path / "dup.fa", "--out", tmp_path / "e", "--no-progress"),
                   "embed", "dup.fa", "more than one record named 'alpha'")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    for model in (tmp_path / "absent-model", tmp_path / "broken"):
        one_error_line(run_cli("embed", model, tmp_path / "dup.fa", "--out", tmp_path / "e", "--no-progress"), "embed",
                       model.name)
    result = run_cli("embed", tmp_path / "absent-model", tmp_path / "dup.fa", "--out", tmp_path / "e", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_crlf_fasta_with_a_trailing_blank_line_and_a_bgz_vcf_score(tmp_path: Path):
    (tmp_path / "g.fa").write_bytes(b">chr1 x\r\nACGTACGTTGCAACGTAGCTAGGCTTAACG\r\n\r\n")
    from Bio import bgzf
    with bgzf.BgzfWriter(str(tmp_path / "v.vcf.bgz")) as f:  # gnomAD's naming
        f.write(VCF_TEXT.replace("\t.\t.\t.\n", "\t.\t.\tLLR=5\n"))  # a record that already carries LLR=
    result = run_cli("score-variants", "--model", GOLDEN / "caduceus-ps-tiny", "--genome", tmp_path / "g.fa", "--vcf",
                     tmp_path / "v.vcf.bgz", "--out", tmp_path / "s.bcf", "--out-vcf", tmp_path / "s.vcf.bgz", "--no-progress")
    assert result.returncode == 0, result.stderr
    import pysam
    for name in ("s.bcf", "s.vcf.bgz"):
        with pysam.VariantFile(str(tmp_path / name)) as back:
            records = list(back)
        assert len(records) == 1 and str(records[0]).count("LLR=") == 1 and records[0].info["LLR"][0] != 5, name
    assert not (tmp_path / "g.fa.fai").exists()
