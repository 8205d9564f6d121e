"""Tests of variant effects through a fitted head (`score_variants(..., head=)`, issue 23 item 6) on the tiny golden
checkpoints. The planted-motif test (destroying the motif scores above a neutral change) is in nbs/14_variants.ipynb."""
import numpy as np
import pandas as pd
import pytest
import torch

from dnallm_nb.dna import reverse_complement
from dnallm_nb.finetune import FinetuneClassifier, FinetuneRegressor, load_finetuned
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.probing import make_dna_task
from dnallm_nb.testing import golden_path
from dnallm_nb.variants import HEAD_COLUMNS, check_head, head_outputs, score_variants

GOLDEN = golden_path()
PS = GOLDEN / "caduceus-ps-tiny"
QUICK = dict(max_steps=2, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    return make_dna_task(24, 32, motif="GATTACA", random_state=0)


@pytest.fixture(scope="module")
def heads(task):
    seqs, y = task
    return {"clf": FinetuneClassifier(PS, method="head", **QUICK).fit(seqs, y),
            "reg": FinetuneRegressor(PS, method="head", **QUICK).fit(seqs, np.linspace(0, 1, len(seqs)))}


@pytest.fixture(scope="module")
def lm():
    return load_model_and_tokenizer(PS, task="mask", device="cpu")


def test_head_effects_equal_the_heads_outputs_by_hand(task, heads, lm):
    model, tok = lm
    seq = task[0][0]
    table = pd.DataFrame([("s", 10, seq[9], "A" if seq[9] != "A" else "C"), ("s", 12, seq[11:14], seq[11]),
                          ("s", 20, seq[19], seq[19] + "TT")], columns=["chrom", "pos", "ref", "alt"])
    alts = [seq[:9] + table.alt[0] + seq[10:], (seq[:12] + seq[14:])[:32], (seq[:20] + "TT" + seq[20:])[:32]]
    assert [len(a) for a in alts] == [32, 30, 32]  # a deletion at the sequence's end leaves it shorter
    clf = heads["clf"]
    got = score_variants(model, tok, table, {"s": seq}, window=32, head=clf, progress=False)
    assert list(got.columns[-3:]) == list(HEAD_COLUMNS) and (got.status == "ok").all()

    def log_odds(s):
        p = clf.predict_proba([s, reverse_complement(s)])[:, 1].astype(float)
        return np.mean(np.log(p) - np.log1p(-p))
    for row, alt in zip(got.itertuples(), alts):
        assert row.head_ref == pytest.approx(log_odds(seq), abs=1e-4)
        assert row.head_effect == pytest.approx(log_odds(alt) - log_odds(seq), abs=1e-4)
    reg = heads["reg"]
    got = score_variants(model, tok, table, {"s": seq}, window=32, head=reg, progress=False)
    by_hand = lambda s: reg.predict([s, reverse_complement(s)]).mean()
    np.testing.assert_allclose(got.head_effect, [by_hand(a) - by_hand(seq) for a in alts], atol=1e-5)
    np.testing.assert_allclose(head_outputs(clf, [seq]), [log_odds(seq)], atol=1e-4)


def test_rows_not_scored_get_nan_and_classes_are_checked(task, heads, lm):
    model, tok = lm
    seq = task[0][1]
    table = pd.DataFrame([("s", 5, seq[4], "<DEL>"), ("s", 6, seq[5], "G" if seq[5] != "G" else "T")], columns=["chrom", "pos", "ref", "alt"])
    with pytest.warns(UserWarning, match="not scored"):
        got = score_variants(model, tok, table, {"s": seq}, window=32, head=heads["clf"], progress=False)
    assert got.head_effect.isna().tolist() == [True, False]
    with pytest.raises(ValueError, match="head_class=7 is not one of the head's classes"):
        head_outputs(heads["clf"], [seq], head_class=7)
    with pytest.raises(ValueError, match="head_class is for classifiers"):
        head_outputs(heads["reg"], [seq], head_class=1)
    with pytest.raises(ValueError, match="already has column"):
        score_variants(model, tok, table.assign(head_effect=0.0), {"s": seq}, window=32, head=heads["clf"], progress=False)


def test_a_head_of_another_model_or_window_is_refused(task, heads, lm, tmp_path):
    model, tok = lm
    ph, ph_tok = load_model_and_tokenizer(GOLDEN / "caduceus-ph-tiny", task="mask", device="cpu")
    clf = heads["clf"]
    with pytest.raises(ValueError, match="fitted on another model"):
        check_head(clf, ph, ph_tok, 32)
    with pytest.raises(ValueError, match="fitted on sequences of 32 bases, but the variants' windows have 64; pass window=32"):
        check_head(clf, model, tok, 64)
    with pytest.raises(ValueError, match="is not fitted"):
        check_head(FinetuneClassifier(PS), model, tok, 32)
    with pytest.raises(TypeError, match="head must be a fitted FinetuneClassifier or FinetuneRegressor"):
        check_head(object(), model, tok, 32)
    check_head(clf, model, tok, 32)  # its own model and window pass
    reloaded = load_finetuned(clf.save_pretrained(tmp_path / "head"))
    assert (reloaded.base_weights_sha256_, reloaded.sequence_lengths_) == (clf.base_weights_sha256_, (32, 32))
    with pytest.raises(ValueError, match="fitted on another model"):
        check_head(reloaded, ph, ph_tok, 32)


def test_head_on_disk_vcf_output_and_cli(task, heads, lm, tmp_path, capsys):
    from dnallm_nb.cli import main as cli_main
    from dnallm_nb.variants import parts_folder, score_variants_to
    import json
    import pysam
    model, tok = lm
    seq = task[0][2]
    genome = {"chr1": seq}
    (tmp_path / "g.fa").write_text(f">chr1\n{seq}\n")
    table = pd.DataFrame([("chr1", p, seq[p - 1], "A" if seq[p - 1] != "A" else "C") for p in (3, 16, 30)], columns=["chrom", "pos", "ref", "alt"])
    (tmp_path / "v.vcf").write_text("##fileformat=VCFv4.2\n##contig=<ID=chr1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(
        f"{c}\t{p}\t.\t{r}\t{a}\t.\t.\t.\n" for c, p, r, a in table.itertuples(index=False)))
    clf = heads["clf"]
    expected = score_variants(model, tok, table, genome, window=32, head=clf, progress=False)
    out = score_variants_to(tmp_path / "s.tsv", model, tok, tmp_path / "v.vcf", tmp_path / "g.fa", window=32, head=clf,
                            score="head_effect", out_vcf=tmp_path / "s.vcf", chunk_size=2, progress=False)
    written = pd.read_csv(out, sep="\t")
    np.testing.assert_allclose(written.head_effect, expected.head_effect, atol=1e-5)
    with pysam.VariantFile(str(tmp_path / "s.vcf")) as back:
        np.testing.assert_allclose([r.info["HEAD_EFFECT"][0] for r in back], expected.head_effect, atol=1e-5)
    manifest = json.loads((parts_folder(out) / "manifest.json").read_text())
    assert manifest["params"]["head"]["base_weights_sha256"] == clf.base_weights_sha256_
    with pytest.raises(ValueError, match="score='head_effect' needs a head"):
        score_variants_to(tmp_path / "x.tsv", model, tok, table, genome, window=32, score="head_effect", progress=False)
    folder = clf.save_pretrained(tmp_path / "head")
    assert cli_main(["score-variants", "--model", str(PS), "--genome", str(tmp_path / "g.fa"), "--vcf", str(tmp_path / "v.vcf"),
                     "--out", str(tmp_path / "cli.tsv"), "--window", "32", "--head", str(folder), "--no-progress"]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "cli.tsv", sep="\t").head_effect, expected.head_effect, atol=1e-5)
    capsys.readouterr()
    assert cli_main(["score-variants", "--model", str(PS), "--genome", str(tmp_path / "g.fa"), "--vcf", str(tmp_path / "v.vcf"),
                     "--out", str(tmp_path / "cli64.tsv"), "--window", "64", "--head", str(folder), "--no-progress"]) != 0
    assert "the head was fitted on sequences of 32 bases, but the variants' windows have 64" in capsys.readouterr().err
