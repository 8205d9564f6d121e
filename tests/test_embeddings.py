"""Acceptance tests of `dnallm_nb.embeddings` on the tiny golden checkpoints (SPEC §4–6, issue 6)."""
import gzip
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from dnallm_nb.distributed import ASSIGNMENT
from dnallm_nb.dna import InvalidSequenceError
from dnallm_nb.cli import main as cli_main
from dnallm_nb.embeddings import POOLINGS, extract_embeddings, extract_embeddings_to, load_embeddings, pool_positions
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.rc import reverse_complement
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
LENGTHS = [1, 1, 1, 2, 2, 5, 5, 5, 21, 21, 21, 55, 55, 144, 144, 144, 300, 300, 300, 300]  # 1..300, repeats to batch


def random_dna(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), n))


def write_fasta(path: Path, records) -> Path:
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models():
    return {name: load_model_and_tokenizer(GOLDEN / f"caduceus-{name}-tiny", device="cpu") for name in ("ph", "ps")}


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(1)
    return [random_dna(rng, n) for n in LENGTHS]


@pytest.mark.parametrize("name", ["ph", "ps"])
def test_batched_equals_one_at_a_time_for_every_pooling(models, seqs, name):
    model, tok = models[name]
    rows: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        single = extract_embeddings(model, tok, seqs, pooling="none", batch_size=1, progress=False).array
        n_single = len(rows)
        rows.clear()
        for pooling in POOLINGS:
            batched = extract_embeddings(model, tok, seqs, pooling=pooling, batch_size=20, progress=False)
            assert batched.ids == [str(i) for i in range(20)]
            assert len(batched.array) == 20
            for got, ref in zip(batched.array, single):
                expected = pool_positions(ref, pooling)
                assert got.shape == expected.shape
                assert np.abs(got - expected).max() <= 1e-5
    finally:
        hook.remove()
    copies = 2 if name == "ph" else 1  # Ph runs rc(x) rows in the same forward call
    assert n_single == 20 and max(rows) == 4 * copies  # one call per sequence vs. equal-length rows together
    assert len(rows) == len(POOLINGS) * len(set(LENGTHS))


@pytest.mark.parametrize("name", ["ph", "ps"])
def test_rc_average_is_strand_invariant(models, name):
    model, tok = models[name]
    rng = np.random.default_rng(2)
    seqs = [random_dna(rng, n) for n in (1, 2, 7, 8, 51, 120)]  # odd and even lengths (center pooling)
    flipped = [reverse_complement(s) for s in seqs]
    for pooling in ("mean", "max", "center"):
        forward = extract_embeddings(model, tok, seqs, pooling=pooling, rc="average", progress=False).array
        reverse = extract_embeddings(model, tok, flipped, pooling=pooling, rc="auto", progress=False).array
        assert forward.shape == (6, 32)
        assert np.abs(forward - reverse).max() <= 1e-5
    raw = extract_embeddings(model, tok, seqs[2:], rc="none", progress=False).array
    raw_rc = extract_embeddings(model, tok, flipped[2:], rc="none", progress=False).array
    assert np.abs(raw - raw_rc).max() > 1e-3  # the model alone is not invariant: the averaging does it
    windowed = [extract_embeddings(model, tok, s, window=32, stride=12, progress=False).array for s in (seqs, flipped)]
    assert np.abs(windowed[0] - windowed[1]).max() <= 1e-5  # mirror-symmetric windows keep the invariance


def test_rc_concat_holds_both_strands(models, seqs):
    for name, (model, tok) in models.items():
        both = extract_embeddings(model, tok, seqs[:6], rc="concat", progress=False).array
        swapped = extract_embeddings(model, tok, [reverse_complement(s) for s in seqs[:6]], rc="concat", progress=False).array
        assert both.shape == (6, 64)
        assert np.abs(both - np.concatenate([swapped[:, 32:], swapped[:, :32]], 1)).max() <= 1e-5, name


@pytest.mark.parametrize("name", ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"])
def test_layers_all_reproduces_golden_hidden_states(name):
    model, tok = load_model_and_tokenizer(GOLDEN / name, device="cpu")
    golden = load_file(GOLDEN / name / "golden.safetensors")
    letters = {i: t for t, i in tok.get_vocab().items()}
    for tag in ("short", "long") if name == "caduceus-ps-tiny" else ("short",):
        seqs = ["".join(letters[i] for i in row.tolist()) for row in golden[f"{tag}.input_ids"]]
        result = extract_embeddings(model, tok, seqs, layers="all", pooling="none", rc="none", progress=False)
        assert result.layers == list(range(model.config.n_layer + 1))
        got = np.stack([np.stack(result[layer]) for layer in result.layers])  # (n_layer+1, B, L, C)
        expected = golden[f"{tag}.hidden_states"].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, (name, tag)
        last = extract_embeddings(model, tok, seqs, pooling="none", rc="none", progress=False).array
        assert np.abs(np.stack(last) - golden[f"{tag}.last_hidden_state"].numpy()).max() <= 1e-4


def test_residual_stream_layers(models, seqs):
    model, tok = models["ps"]
    result = extract_embeddings(model, tok, seqs[:5], layers="all", residual=True, progress=False)
    assert result.layers == [0, 1]  # n_layer entries
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        extract_embeddings(model, tok, seqs[:5], layers=2, residual=True, progress=False)


@pytest.mark.parametrize("name, window", [("ph", 300), ("ps", 1000)])  # equal to, and beyond, the longest sequence
def test_window_at_least_length_gives_exactly_the_direct_result(models, seqs, name, window):
    model, tok = models[name]
    direct = extract_embeddings(model, tok, seqs, pooling="none", progress=False).array
    windowed = extract_embeddings(model, tok, seqs, pooling="none", window=window, stride=7, progress=False).array
    assert all(np.array_equal(a, b) for a, b in zip(windowed, direct))
    merged = extract_embeddings(model, tok, seqs, pooling="none", window=64, stride=32, progress=False).array
    for a, b, n in zip(merged, direct, LENGTHS):
        assert a.shape == b.shape
        assert np.array_equal(a, b) if n <= 64 else np.abs(a - b).max() > 1e-4


def test_context_warning():
    model, tok = load_model_and_tokenizer(GOLDEN / "plantcaduceus-tiny", device="cpu")  # tokenizer context: 512
    seq = random_dna(np.random.default_rng(3), 600)
    with pytest.warns(UserWarning, match="600 tokens, more than the 512-token context"):
        extract_embeddings(model, tok, [seq], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_embeddings(model, tok, [seq], window=512, stride=256, progress=False)


def test_inputs_keep_ids(models, tmp_path):
    model, tok = models["ps"]
    rng = np.random.default_rng(4)
    data = {"a": random_dna(rng, 12), "b": random_dna(rng, 30)}
    reference = extract_embeddings(model, tok, list(data.values()), progress=False).array
    series = extract_embeddings(model, tok, pd.Series(data), progress=False)
    fasta = extract_embeddings(model, tok, write_fasta(tmp_path / "x.fa", data.items()), progress=False)
    with gzip.open(tmp_path / "x.fa.gz", "wt") as f:
        f.write((tmp_path / "x.fa").read_text())
    gz = extract_embeddings(model, tok, tmp_path / "x.fa.gz", progress=False)
    mapping = extract_embeddings(model, tok, data, progress=False)
    for result in (series, fasta, gz, mapping):
        assert result.ids == ["a", "b"] and np.array_equal(result.array, reference)
    assert list(series.to_dataframe().index) == ["a", "b"]


def test_bed_intervals_and_minus_strand(models, tmp_path):
    model, tok = models["ph"]
    chrom = random_dna(np.random.default_rng(5), 200)
    write_fasta(tmp_path / "genome.fa", [("chr1", chrom)])
    (tmp_path / "x.bed").write_text("chr1\t10\t60\tplus\t0\t+\nchr1\t10\t60\tminus\t0\t-\nchr1\t100\t150\n")
    result = extract_embeddings(model, tok, tmp_path / "x.bed", genome=tmp_path / "genome.fa", rc="none", progress=False)
    assert result.ids == ["plus", "minus", "chr1:100-150"]
    direct = extract_embeddings(model, tok, [chrom[10:60], reverse_complement(chrom[10:60]), chrom[100:150]],
                                rc="none", progress=False).array
    assert np.array_equal(result.array, direct)
    averaged = extract_embeddings(model, tok, tmp_path / "x.bed", genome=tmp_path / "genome.fa", progress=False).array
    assert np.abs(averaged[0] - averaged[1]).max() <= 1e-5  # the two strands of one interval agree
    with pytest.raises(ValueError, match="needs genome="):
        extract_embeddings(model, tok, tmp_path / "x.bed", progress=False)


def test_shard_folder_structure(models, tmp_path):
    model, tok = models["ps"]
    rng = np.random.default_rng(6)
    records = [(f"r{i}", random_dna(rng, 16 + i % 2)) for i in range(40)]
    fasta = write_fasta(tmp_path / "x.fa", records)
    out = extract_embeddings_to(tmp_path / "emb", model, tok, fasta, shard_size=16, layers=[0, -1], progress=False)
    assert out == tmp_path / "emb"
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == [f"0000{k}.{part}" for k in range(3) for part in ("csv", "hidden0.npy", "hidden2.npy")]
    assert [np.load(out / "shards" / f"0000{k}.hidden2.npy").shape for k in range(3)] == [(16, 32), (16, 32), (8, 32)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_sequences"] == 40 and manifest["n_shards"] == 3 and manifest["dims"] == {"0": 32, "2": 32}
    assert manifest["params"]["pooling"] == "mean" and manifest["params"]["layers"] == [0, 2]
    assert manifest["distributed"] == {"world_size": 1, "assignment": ASSIGNMENT}  # one process finished it
    index = pd.read_csv(out / "index.csv")
    assert list(index.columns) == ["id", "length", "shard", "row", "offset"]
    assert index["id"].tolist() == [rid for rid, _ in records] and index["shard"].tolist() == [0] * 16 + [1] * 16 + [2] * 8
    stored = load_embeddings(out)
    direct = extract_embeddings(model, tok, fasta, layers=[0, -1], progress=False)
    assert stored.ids == direct.ids and all(np.array_equal(stored[k], direct[k]) for k in (0, 2))
    tokens = extract_embeddings_to(tmp_path / "tok", model, tok, fasta, shard_size=16, pooling="none", progress=False)
    assert np.load(tokens / "shards" / "00000.hidden2.npy").shape == (16 * 16 + 8, 32)  # rows at the index's offsets
    assert [a.shape[0] for a in load_embeddings(tokens).array] == [len(s) for _, s in records]


KILLER = """
import os, signal, sys
import dnallm_nb.embeddings as E
from dnallm_nb.load import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer(sys.argv[1], device="cpu")
calls, original = 0, E.atomic_write
def dying_write(path, write):  # on call N: leave a partial temp file, then die without any cleanup
    global calls
    calls += 1
    if calls == int(sys.argv[4]):
        path.with_name(f".{path.name}.tmp").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    original(path, write)
E.atomic_write = dying_write
E.extract_embeddings_to(sys.argv[3], model, tokenizer, sys.argv[2], shard_size=8, layers=[0, -1], progress=False)
"""


def test_killed_run_resumes_to_the_same_files(models, tmp_path):
    model, tok = models["ps"]
    rng = np.random.default_rng(7)
    fasta = write_fasta(tmp_path / "x.fa", [(f"r{i}", random_dna(rng, 20 + i % 3)) for i in range(40)])  # 5 shards
    clean = extract_embeddings_to(tmp_path / "clean", model, tok, fasta, shard_size=8, layers=[0, -1], progress=False)
    killed = tmp_path / "killed"
    # the module's atomic_write calls: per shard 2 arrays + id list (the manifest is the ShardFolder's); die on shard 2's second array
    run = subprocess.run([sys.executable, "-c", KILLER, str(GOLDEN / "caduceus-ps-tiny"), str(fasta), str(killed), "8"],
                         capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert sorted(p.name for p in (killed / "shards").glob("*.csv")) == ["00000.csv", "00001.csv"]
    assert list((killed / "shards").glob(".*.tmp")) and not (killed / "index.csv").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        load_embeddings(killed)
    extract_embeddings_to(killed, model, tok, fasta, shard_size=8, layers=[0, -1], progress=False)
    assert files_of(killed) == files_of(clean)


def test_rerun_refuses_other_parameters_or_input(models, tmp_path):
    model, tok = models["ps"]
    rng = np.random.default_rng(8)
    seqs = [random_dna(rng, 10) for _ in range(10)]
    extract_embeddings_to(tmp_path / "a", model, tok, seqs, shard_size=4, progress=False)
    with pytest.raises(ValueError, match=r"different parameters \(pooling\)"):
        extract_embeddings_to(tmp_path / "a", model, tok, seqs, shard_size=4, pooling="max", progress=False)
    with pytest.raises(ValueError, match=r"different parameters \(input\)"):
        extract_embeddings_to(tmp_path / "a", model, tok, seqs[::-1], shard_size=4, progress=False)
    extract_embeddings_to(tmp_path / "b", model, tok, (s for s in seqs), shard_size=4, progress=False)
    with pytest.raises(ValueError, match="made from other sequences"):  # a stream cannot be fingerprinted: ids are checked
        extract_embeddings_to(tmp_path / "b", model, tok, ((f"x{i}", s) for i, s in enumerate(seqs)), shard_size=4,
                           progress=False)


def test_bad_input_errors(models, tmp_path):
    model, tok = models["ps"]
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(InvalidSequenceError, match="holds no records"):
        extract_embeddings(model, tok, tmp_path / "empty.fa", progress=False)
    bad = write_fasta(tmp_path / "bad.fa", [("good", "ACGT"), ("chr2:5-9", "ACXGT")])
    with pytest.raises(InvalidSequenceError, match=r"'chr2:5-9' has non-DNA characters 'X'"):
        extract_embeddings(model, tok, bad, progress=False)
    for layers in (3, -4, [0, 5]):
        with pytest.raises(IndexError, match="out of range.*valid indices -3..2"):
            extract_embeddings(model, tok, ["ACGT"], layers=layers, progress=False)
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        extract_embeddings(model, tok, ["ACGT"], pooling="avg", progress=False)
    with pytest.raises(ValueError, match="unknown rc='both'"):
        extract_embeddings(model, tok, ["ACGT"], rc="both", progress=False)
    with pytest.raises(ValueError, match="stride=9 must lie in 1..window"):
        extract_embeddings(model, tok, ["ACGT"], window=8, stride=9, progress=False)
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        extract_embeddings(model, tok, "ACGT", progress=False)
    with pytest.raises(ValueError, match="no sequences to embed"):
        extract_embeddings(model, tok, [], progress=False)


def test_cli(models, tmp_path, capsys):
    model, tok = models["ps"]
    rng = np.random.default_rng(9)
    fasta = write_fasta(tmp_path / "x.fa", [(f"r{i}", random_dna(rng, 25)) for i in range(6)])
    argv = [str(GOLDEN / "caduceus-ps-tiny"), str(fasta), "--out", str(tmp_path / "cli"), "--layers", "all",
            "--pooling", "center", "--device", "cpu", "--no-progress"]
    assert cli_main(["embed", *argv]) == 0
    assert "embedded 6 sequences" in capsys.readouterr().out
    stored = load_embeddings(tmp_path / "cli")
    direct = extract_embeddings(model, tok, fasta, layers="all", pooling="center", progress=False)
    assert stored.layers == [0, 1, 2] and all(np.array_equal(stored[k], direct[k]) for k in (0, 1, 2))
    bad = write_fasta(tmp_path / "bad.fa", [("weird", "ACGU")])
    assert cli_main(["embed", argv[0], str(bad), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "'weird' has non-DNA characters 'U'" in capsys.readouterr().err
