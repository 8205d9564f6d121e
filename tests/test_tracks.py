"""Acceptance tests of `dnallm_nb.tracks` and `dnallm-nb track` (issue 23, item 4) on the tiny golden checkpoints:
the values equal `score_variants`' and a hand computation from the logits, the bigWig read back with pyBigWig equals
the in-memory track, bad regions fail with one clear line, and 2 torchrun processes write the one-process files."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyBigWig
import pytest
import torch
from scipy.special import softmax

from dnallm_nb.cli import main as cli_main
from dnallm_nb.distributed import torchrun_argv
from dnallm_nb.dna import reverse_complement
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.testing import golden_path, masked_base_log_probs, raises
from dnallm_nb.tracks import TRACK_VALUES, base_track, track_regions, track_to
from dnallm_nb.variants import parts_folder, score_variants, variant_window

MODEL = golden_path("caduceus-ps-tiny")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
REGIONS = ["chr1:1-12", "chr1:190-200", "chr2:15-30"]  # both contig ends, and the N bases of chr2


@pytest.fixture(scope="module")
def genome():
    rng = np.random.default_rng(11)
    seqs = {"chr1": "".join(rng.choice(list("ACGT"), 200)), "chr2": "".join(rng.choice(list("ACGT"), 60))}
    seqs["chr2"] = seqs["chr2"][:20] + "NNN" + seqs["chr2"][23:]
    return seqs


@pytest.fixture(scope="module")
def model():
    return load_model_and_tokenizer(MODEL, task="mask", device="cpu")


def write_fasta(path: Path, genome: dict) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in genome.items()))
    return path


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcaduceus-tiny"])
@pytest.mark.parametrize("rc", ["average", "none"])
def test_values_equal_hand_computation_from_logits(genome, name, rc):
    model, tok = load_model_and_tokenizer(golden_path(name), task="mask", device="cpu")
    track = base_track(model, tok, genome, ["chr1:1-3", "chr1:100-101", "chr2:19-25"], window=32, rc=rc, progress=False)
    for row in track.itertuples():
        seq = genome[row.chrom]
        if row.ref == "N":
            assert np.isnan([row.p_ref, row.llr_min, row.llr_mean]).all()
            continue
        start, index = variant_window(row.pos, len(seq), 32)
        text, r = seq[start : start + 32], "ACGT".index(row.ref)
        lp = masked_base_log_probs(model, tok, text, index)
        llr = lp - lp[r]
        if rc == "average":
            minus = masked_base_log_probs(model, tok, reverse_complement(text), len(text) - 1 - index)[::-1]
            llr, lp = (llr + (minus - minus[r])) / 2, (lp + minus) / 2
        alts = np.delete(llr, r)
        np.testing.assert_allclose([row.p_ref, row.llr_min, row.llr_mean], [softmax(lp)[r], alts.min(), alts.mean()], atol=1e-5)


def test_values_are_score_variants_llrs_from_the_same_forward(genome, model):
    model, tok = model
    track = base_track(model, tok, genome, ["chr1:1-4", "chr1:198-200", "chr2:20-25"], window=32, batch_size=1, progress=False)
    scored = track[track.ref != "N"]
    snvs = [(c, p, r, a) for c, p, r in zip(scored.chrom, scored.pos, scored.ref) for a in "ACGT" if a != r]
    variants = score_variants(model, tok, snvs, genome, window=32, batch_size=1, progress=False)
    llr = variants.llr.to_numpy().reshape(-1, 3)
    assert np.array_equal(scored.llr_min, llr.min(1)) and np.array_equal(scored.llr_mean, llr.mean(1))  # exact
    assert np.array_equal(scored.p_ref, variants.p_ref.to_numpy()[::3])
    batched = base_track(model, tok, genome, ["chr1:1-4", "chr1:198-200", "chr2:20-25"], window=32, batch_size=16, progress=False)
    np.testing.assert_allclose(batched[list(TRACK_VALUES)], track[list(TRACK_VALUES)], atol=1e-5)


def test_bigwig_read_back_equals_the_in_memory_track(genome, model, tmp_path):
    model, tok = model
    track = base_track(model, tok, genome, REGIONS, window=32, progress=False)
    assert track.ref.eq("N").sum() == 3 and track[track.ref == "N"][list(TRACK_VALUES)].isna().all().all()
    files = track_to(tmp_path / "x.bw", model, tok, genome, REGIONS, window=32, chunk_size=5, progress=False)
    assert {v: p.name for v, p in files.items()} == {v: f"x.{v}.bw" for v in TRACK_VALUES}
    for value, path in files.items():
        with pyBigWig.open(str(path)) as bw:
            assert bw.chroms() == {"chr1": 200, "chr2": 60}
            got = np.concatenate([bw.values(c, s, e) for c, s, e in track_regions(genome, REGIONS)])
            assert np.array_equal(got, track[value].to_numpy(np.float32), equal_nan=True), value
            assert [s for s, _, _ in bw.intervals("chr2")] == [14, 15, 16, 17, 18, 19, 23, 24, 25, 26, 27, 28, 29]  # N: no entry
    manifest = json.loads((parts_folder(tmp_path / "x.bw") / "manifest.json").read_text())
    assert manifest["n_chunks"] == 10 and manifest["distributed"]["world_size"] == 1
    assert manifest["params"]["input"]["genome"] and "weights_sha256" in manifest["params"]["model"]
    beds = track_to(tmp_path / "x.bedgraph", model, tok, genome, REGIONS, window=32, chunk_size=5, values=["p_ref"], progress=False)
    lines = [line.split("\t") for line in beds["p_ref"].read_text().splitlines()]
    assert all(len(f) == 4 for f in lines) and len(lines) == len(track) - 3
    assert [(c, int(s), int(e)) for c, s, e, _ in lines[:2]] == [("chr1", 0, 1), ("chr1", 1, 2)]
    np.testing.assert_allclose([float(f[3]) for f in lines], track.p_ref.dropna(), rtol=1e-6)


def test_rerun_resumes_and_other_parameters_are_refused(genome, model, tmp_path):
    model, tok = model
    out = tmp_path / "x.bw"
    track_to(out, model, tok, genome, REGIONS, window=32, chunk_size=10, progress=False)
    parts = sorted(parts_folder(out).glob("*.npy"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    os.remove(parts[1])  # as if the run had been killed before this chunk
    files = track_to(out, model, tok, genome, REGIONS, window=32, chunk_size=10, progress=False)
    assert {p: p.stat().st_mtime_ns for p in parts if p != parts[1]} == {p: s for p, s in stamps.items() if p != parts[1]}
    assert parts[1].exists() and all(p.exists() for p in files.values())
    raises(lambda: track_to(out, model, tok, genome, REGIONS, window=16, chunk_size=10, progress=False),
           "made with different parameters (window)")


def test_bad_regions_fail_with_one_clear_line(genome, tmp_path, capsys):
    fasta = write_fasta(tmp_path / "g.fa", genome)
    (tmp_path / "empty.bed").write_text("track name=none\n")
    (tmp_path / "past.bed").write_text("chr1\t0\t10\nchr2\t50\t61\n")
    base = ["track", "--model", str(MODEL), "--genome", str(fasta), "--out", str(tmp_path / "x.bw"), "--no-progress"]
    for extra, expected in [(["--region", "chr1:150-201"], "runs past the end of chr1, which has 200 bases"),
                            (["--region", "chrX:1-10"], "contig 'chrX', which the genome does not have"),
                            (["--region", "chr1:10-5"], "needs 1 <= start <= end"),
                            (["--bed", str(tmp_path / "empty.bed")], "holds no intervals"),
                            (["--bed", str(tmp_path / "past.bed")], "interval 2 (chr2 50 61) runs past the end of chr2"),
                            (["--bed", str(tmp_path / "missing.bed")], "--bed")]:
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dnallm-nb track: error: ") and expected in err, err
    assert not parts_folder(tmp_path / "x.bw").exists()
    assert track_regions(genome, bed=pd.DataFrame({"chrom": ["chr2", "chr1", "chr1"], "start": [0, 5, 0], "end": [3, 9, 6]})) == \
        [("chr1", 0, 9), ("chr2", 0, 3)]


def test_torchrun_track_is_byte_identical_to_one_process(genome, tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", genome)
    options = ["--model", str(MODEL), "--genome", str(fasta), "--window", "32", "--chunk-size", "4", "--no-progress"]
    options += [a for r in REGIONS for a in ("--region", r)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["track", *options, "--out", str(tmp_path / "one" / "x.bw")]) == 0
    finally:
        torch.set_num_threads(threads)
    run = subprocess.run(torchrun_argv(2, "-m", "dnallm_nb.cli", "track", *options, "--out", str(tmp_path / "two" / "x.bw")),
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("track of 39 bases in 3 region(s)") == 1 and "2 processes" in run.stdout  # rank 0 only

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    manifests = [json.loads(f.pop("x.bw.parts/manifest.json")) for f in (one, two)]
    assert one == two and sorted(one)[:3] == ["x.bw.parts/00000.npy", "x.bw.parts/00001.npy", "x.bw.parts/00002.npy"]
    assert {"x.p_ref.bw", "x.llr_min.bw", "x.llr_mean.bw"} <= set(one)
    assert manifests[1]["distributed"].pop("world_size") == 2 and manifests[0]["distributed"].pop("world_size") == 1
    assert manifests[0] == manifests[1]
