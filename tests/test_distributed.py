"""torchrun acceptance tests (issue 14): `dnallm-nb embed` / `extract_embeddings_to` as 2 processes, or 2 "machines",
write the one-process folder byte for byte; a killed or failing rank fails the job and a relaunch resumes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dnallm_nb.distributed import Distributed, ShardedJob, assign_shares, launch_env, torchrun_argv
from dnallm_nb.cli import main as cli_main
from dnallm_nb.embeddings import _ShardWriter, extract_embeddings, extract_embeddings_to, load_embeddings
from dnallm_nb.load import load_model_and_tokenizer
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
MODEL = GOLDEN / "caduceus-ps-tiny"
CLI = Path(sys.executable).parent / "dnallm-nb"  # the console script, run by torchrun's Python
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TIMEOUT = 240


def write_fasta(path: Path, n: int, lengths: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f">r{i}\n{''.join(rng.choice(list('ACGT'), int(rng.integers(*lengths))))}\n")
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_folder(got: Path, expected: Path, world_size: int) -> None:
    "Every file byte-identical, the manifest equal but for distributed.world_size."
    a, b = files_of(got), files_of(expected)
    manifests = [json.loads(files.pop("manifest.json")) for files in (a, b)]
    assert a == b
    assert manifests[0]["distributed"].pop("world_size") == world_size and manifests[1]["distributed"].pop("world_size") == 1
    assert manifests[0] == manifests[1]


def owners(folder: Path, world_size: int = 2) -> list[int]:
    "The rank that computes each shard of `folder`'s input, from its shards' token counts."
    index = pd.read_csv(folder / "index.csv")
    return assign_shares(index.groupby("shard")["length"].sum().tolist(), world_size)


def torchrun(*program: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_argv(nproc, *map(str, program)), capture_output=True, text=True, env=ENV, timeout=TIMEOUT)


def one_process(fasta: Path, out: Path, *options: str) -> Path:
    "The reference: `dnallm-nb embed` in this process, with one thread like each torchrun process."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["embed", str(MODEL), str(fasta), "--out", str(out), "--no-progress", *options]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    fasta = write_fasta(root / "x.fa", 64, (200, 700), seed=0)  # 16 shards of 4: some seconds of work per rank
    options = ("--shard-size", "4", "--layers", "0,-1")
    return root, fasta, options, one_process(fasta, root / "reference", *options)


def test_assignment_is_balanced_and_deterministic():
    assert assign_shares([4, 4, 4, 4], 2) == [0, 1, 0, 1]
    assert assign_shares([9, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1] and assign_shares([2, 2], 3) == [0, 1]
    rng = np.random.default_rng(1)
    for _ in range(100):
        weights, world = rng.integers(1, 10_000, int(rng.integers(1, 80))).tolist(), int(rng.integers(1, 7))
        owners = assign_shares(weights, world)
        assert owners == assign_shares(weights, world) and set(owners) <= set(range(world))
        loads = np.bincount(owners, weights, minlength=world)
        assert loads.max() - loads.min() <= max(weights)
    with pytest.raises(ValueError, match="must be non-negative"):
        assign_shares([3, -1], 2)


def test_job_refuses_ranks_that_read_different_inputs():
    class TwoRanks(Distributed):  # rank 0 of 2, whose peer reports one shard more
        def all_gather(self, obj):
            return [obj, obj if obj is None else (obj[0] + 1, obj[1])]

        def on_main(self, fn):
            return fn()
    job = ShardedJob(TwoRanks(world_size=2, active=True), prepare=lambda: [])
    assert [job.take(k, 5, f"s{k}") for k in range(4)] == [True, False, True, False]
    with pytest.raises(RuntimeError, match="rank 0: 4 shards, rank 1: 5 shards.*same call on the same input"):
        job.finish(lambda n: None)


def test_in_memory_is_refused_under_torchrun(monkeypatch):
    model, tok = load_model_and_tokenizer(MODEL, device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch_env().rank == 1
    with pytest.raises(ValueError, match=r"rank 1 of 2.*call extract_embeddings_to\(FOLDER"):
        extract_embeddings(model, tok, ["ACGT"], progress=False)


def test_other_ranks_check_the_folder_rank_0_prepared(tmp_path):
    params = {"pooling": "mean", "input": {"file": "x.fa"}}
    with pytest.raises(FileNotFoundError, match="every machine of the job sees"):
        _ShardWriter(tmp_path / "elsewhere", params).check()  # the folder is not shared with this machine
    assert _ShardWriter(tmp_path / "emb", params).prepare() == []
    _ShardWriter(tmp_path / "emb", params).check()
    with pytest.raises(ValueError, match=r"this rank's call differs from rank 0's \(input\)"):
        _ShardWriter(tmp_path / "emb", {**params, "input": {"file": "y.fa"}}).check()


def test_other_parameters_are_refused_on_every_rank_before_any_work(data):
    root, fasta, options, reference = data
    before = files_of(reference)
    run = torchrun(CLI, "embed", MODEL, fasta, "--out", reference, "--no-progress", *options, "--pooling", "max")
    assert run.returncode != 0
    assert run.stderr.count("holds embeddings made with different parameters (pooling)") == 2, run.stderr  # both ranks
    assert files_of(reference) == before


KILL_SCRIPT = """
import os, signal, sys
import dnallm_nb.embeddings as E
from dnallm_nb.distributed import launch_env
write = E._ShardWriter.write
def write_then_die(self, k, *args):  # rank 1 dies (SIGKILL: no cleanup) right after writing its first shard
    write(self, k, *args)
    if launch_env().rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
E._ShardWriter.write = write_then_die
from dnallm_nb.cli import main
sys.exit(main(["embed", *sys.argv[1:]]))
"""


def test_killed_rank_fails_the_job_and_a_relaunch_resumes(data, tmp_path):
    root, fasta, options, reference = data
    out = tmp_path / "killed"
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    run = torchrun(tmp_path / "kill.py", MODEL, fasta, "--out", out, "--no-progress", *options)
    assert run.returncode != 0 and "SIGKILL" in run.stderr, run.stderr
    done = sorted(p.name for p in (out / "shards").glob("*.csv"))
    rank1 = [f"{k:05d}.csv" for k, rank in enumerate(owners(reference)) if rank == 1]
    assert rank1[0] == "00001.csv" and [name for name in rank1 if name in done] == ["00001.csv"]  # rank 1 had more to do
    assert not (out / "index.csv").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        load_embeddings(out)
    written = {name: (out / "shards" / name).stat().st_mtime_ns for name in done}
    run = torchrun(CLI, "embed", MODEL, fasta, "--out", out, "--no-progress", *options)  # the console script, relaunched
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("embedded 64 sequences") == 1 and "16 shards, 2 processes" in run.stdout  # rank 0 only
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in written} == written  # finished shards skipped
    assert_same_folder(out, reference, world_size=2)


def test_failing_rank_shows_its_error_and_leaves_the_folder_unfinished(data):
    root, fasta, options, reference = data
    out = root / "failing"
    (out / "shards" / "00001.hidden2.npy").mkdir(parents=True)  # rank 1 cannot write its first shard
    run = torchrun(CLI, "embed", MODEL, fasta, "--out", out, "--no-progress", *options)
    assert run.returncode != 0
    assert "dnallm-nb embed: error: [Errno 21] Is a directory" in run.stderr and "00001.hidden2.npy" in run.stderr  # one line
    assert not (out / "index.csv").exists() and not (out / "shards" / "00001.csv").exists()
    with pytest.raises(ValueError, match="unfinished run"):
        load_embeddings(out)
    (out / "shards" / "00001.hidden2.npy").rmdir()
    one_process(fasta, out, *options)  # resuming with another number of processes
    assert files_of(out) == files_of(reference)


SCRIPT = """
import sys
import dnallm_nb.embeddings as E
from dnallm_nb.distributed import launch_env
from dnallm_nb.load import load_model_and_tokenizer
model_path, fasta, out, log = sys.argv[1:]
write, rank = E._ShardWriter.write, launch_env().rank
def logged(self, k, *args):  # which rank writes which shard
    with open(f"{log}.{rank}", "a") as f: f.write(f"{k}\\n")
    write(self, k, *args)
E._ShardWriter.write = logged
model, tokenizer = load_model_and_tokenizer(model_path, device="cpu")
E.extract_embeddings_to(out, model, tokenizer, fasta, shard_size=4, pooling="none", rc="concat", progress=False)
"""


def test_two_machines_write_the_one_process_folder(data, tmp_path):
    root, fasta, _, _ = data
    (tmp_path / "script.py").write_text(SCRIPT)
    reference = one_process(fasta, tmp_path / "reference", "--shard-size", "4", "--pooling", "none", "--rc", "concat")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"test{port}", str(tmp_path / "script.py"), str(MODEL),
            str(fasta), str(tmp_path / "out"), str(tmp_path / "log")]
    agents = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    for agent in agents:
        _, stderr = agent.communicate(timeout=TIMEOUT)
        assert agent.returncode == 0, stderr
    assert_same_folder(tmp_path / "out", reference, world_size=2)
    shares = owners(tmp_path / "out")
    assert 0 < sum(shares) < 15  # both ranks have work
    for rank in (0, 1):
        written = [int(k) for k in (tmp_path / f"log.{rank}").read_text().split()]
        assert written == [k for k, owner in enumerate(shares) if owner == rank]


# ---- variant scoring ------------------------------------------------------------------------------------------------

VARIANT_KILL_SCRIPT = """
import os, signal, sys
import dnallm_nb.variants as V
from dnallm_nb.distributed import launch_env
write = V._Parts.write
def write_then_die(self, k, frame):  # rank 1 dies (SIGKILL: no cleanup) right after writing its first chunk
    write(self, k, frame)
    if launch_env().rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
V._Parts.write = write_then_die
from dnallm_nb.cli import main
sys.exit(main(["score-variants", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def variant_data(tmp_path_factory):
    "A 2-chromosome genome, a VCF of 40 SNVs on it (10 chunks of 4), and the one-process output of score-variants."
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(3)
    genome = {name: "".join(rng.choice(list("ACGT"), 1500)) for name in ("chr1", "chr2")}
    (root / "g.fa").write_text("".join(f">{name}\n{seq}\n" for name, seq in genome.items()))
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for i, pos in enumerate(sorted(rng.choice(np.arange(1, 1501), 40, replace=False))):
        chrom = "chr1" if i < 25 else "chr2"
        ref = genome[chrom][pos - 1]
        lines.append(f"{chrom}\t{pos}\tv{i}\t{ref}\t{'C' if ref != 'C' else 'T'}\t.\t.\t.")
    (root / "v.vcf").write_text("\n".join(lines) + "\n")
    options = ["--model", str(MODEL), "--genome", str(root / "g.fa"), "--vcf", str(root / "v.vcf"), "--window", "64",
               "--chunk-size", "4", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["score-variants", *options, "--out", str(root / "one.tsv"), "--out-vcf", str(root / "one.vcf.gz")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root, options


def assert_same_scores(root: Path, name: str, world_size: int) -> None:
    "The TSV, the VCF and every part file byte-identical to the one-process run's; the manifests equal but for world_size."
    assert (root / f"{name}.tsv").read_bytes() == (root / "one.tsv").read_bytes()
    assert gzip_text(root / f"{name}.vcf.gz") == gzip_text(root / "one.vcf.gz")
    got, expected = files_of(root / f"{name}.tsv.parts"), files_of(root / "one.tsv.parts")
    manifests = [json.loads(files.pop("manifest.json")) for files in (got, expected)]
    assert got == expected and sorted(got) == [f"{k:05d}.tsv" for k in range(10)]
    assert manifests[0]["distributed"].pop("world_size") == world_size and manifests[1]["distributed"].pop("world_size") == 1
    assert manifests[0] == manifests[1]


def gzip_text(path: Path) -> str:
    import gzip
    return gzip.open(path, "rt").read()


def test_score_variants_under_torchrun_matches_one_process(variant_data):
    root, options = variant_data
    run = torchrun("-m", "dnallm_nb.cli", "score-variants", *options, "--out", root / "two.tsv", "--out-vcf", root / "two.vcf.gz")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("scored 40 variants into") == 1 and "2 processes" in run.stdout  # rank 0 only
    assert_same_scores(root, "two", world_size=2)


def test_killed_scoring_rank_fails_the_job_and_a_relaunch_resumes(variant_data, tmp_path):
    root, options = variant_data
    (tmp_path / "kill.py").write_text(VARIANT_KILL_SCRIPT)
    outputs = ["--out", root / "killed.tsv", "--out-vcf", root / "killed.vcf.gz"]
    run = torchrun(tmp_path / "kill.py", *options, *outputs)
    assert run.returncode != 0 and "SIGKILL" in run.stderr, run.stderr
    assert not (root / "killed.tsv").exists() and not (root / "killed.vcf.gz").exists()
    done = sorted(p.name for p in (root / "killed.tsv.parts").glob("*.tsv"))
    rank1 = [f"{k:05d}.tsv" for k, rank in enumerate(assign_shares([4] * 10, 2)) if rank == 1]
    assert [name for name in rank1 if name in done] == [rank1[0]]  # rank 1 wrote one of its chunks, then died
    written = {name: (root / "killed.tsv.parts" / name).stat().st_mtime_ns for name in done}
    run = torchrun("-m", "dnallm_nb.cli", "score-variants", *options, *outputs)
    assert run.returncode == 0, run.stderr
    assert {name: (root / "killed.tsv.parts" / name).stat().st_mtime_ns for name in written} == written  # not recomputed
    assert_same_scores(root, "killed", world_size=2)


def test_scoring_rank_errors_reach_the_shell_and_other_calls_are_refused(variant_data):
    root, options = variant_data
    run = torchrun("-m", "dnallm_nb.cli", "score-variants", *options, "--out", root / "one.tsv", "--window", "32")
    assert run.returncode != 0
    assert run.stderr.count("holds variant scores made with different parameters (window)") == 2, run.stderr  # both ranks
