"""The fast CPU scan backend ("cpu", dnallm_nb.fastscan) inside whole models, and its build.

Golden checkpoints still match upstream with it; random models give the reference backend's outputs at awkward
lengths and batch sizes; RCPS models stay RC-equivariant. The kernels build once per Python environment, and a
failed build falls back to the reference backend with a warning. The scan-level comparisons live in
nbs/06_fastscan.ipynb.
"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dnallm_nb import fastscan
from dnallm_nb.configuration import CaduceusConfig
from dnallm_nb.modeling import CaduceusForMaskedLM, CaduceusModel, flip_strands, reverse_complement_ids
from dnallm_nb.testing import golden_path

GOLDEN = golden_path()
FAMILIES = ["caduceus-ph-tiny", "caduceus-ps-tiny", "plantcaduceus-tiny", "plantcad2-tiny"]
TOL = 1e-4
CADUCEUS_COMPLEMENT = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 10, 8: 9, 9: 8, 10: 7, 11: 11}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_outputs_with_cpu_backend(family):
    folder = GOLDEN / family
    golden = load_file(folder / "golden.safetensors")
    model = CaduceusForMaskedLM.from_pretrained(folder, scan_backend="cpu").eval()
    assert model.scan_backend == "cpu"
    with torch.no_grad():
        for tag in ("short", "long"):
            ids = golden[f"{tag}.input_ids"]
            out = model(ids, output_hidden_states=True)
            assert max_diff(out.logits, golden[f"{tag}.logits"]) <= TOL, tag
            assert max_diff(out.hidden_states[-1], golden[f"{tag}.last_hidden_state"]) <= TOL, tag
            expected = golden[f"{tag}.hidden_states"]
            assert len(out.hidden_states) == expected.shape[0]
            for i, (got, want) in enumerate(zip(out.hidden_states, expected)):
                assert max_diff(got, want) <= TOL, f"{tag} hidden_states[{i}]"
            if f"{tag}.rc_logits" in golden:
                rc_ids = reverse_complement_ids(ids, torch.tensor(model.config.complement_ids))
                assert max_diff(model(rc_ids).logits, golden[f"{tag}.rc_logits"]) <= TOL, tag


def small_config(kind: str) -> CaduceusConfig:
    "Random-init configs with awkward sizes: d_inner not a multiple of the kernel's 32 channels, 3 heads."
    if kind == "mamba2":
        return CaduceusConfig(d_model=96, n_layer=2, vocab_size=12, rcps=True, complement_map=CADUCEUS_COMPLEMENT,
                              mixer_type="mamba2", ssm_cfg=dict(d_state=16, headdim=64, chunk_size=256))
    return CaduceusConfig(d_model=40, n_layer=2, vocab_size=12, rcps=kind == "ps", complement_map=CADUCEUS_COMPLEMENT,
                          mixer_type="mamba1", ssm_cfg=dict(d_state=16))


@pytest.mark.parametrize("kind", ["ph", "ps", "mamba2"])
@pytest.mark.parametrize("length", [1, 3, 1031])
def test_cpu_backend_matches_reference_in_the_model(kind, length):
    torch.manual_seed(0)
    model = CaduceusModel(small_config(kind)).eval()
    ids = torch.randint(7, 12, (2, length))
    outputs = {}
    with torch.no_grad():
        for backend in ("cpu", "reference"):
            model.scan_backend = backend
            assert model.scan_backend == backend
            outputs[backend] = model(ids, output_hidden_states=True).hidden_states
    for i, (fast, ref) in enumerate(zip(outputs["cpu"], outputs["reference"])):
        assert max_diff(fast, ref) <= TOL, f"hidden_states[{i}]"


@pytest.mark.parametrize("kind", ["ph", "ps", "mamba2"])
@pytest.mark.parametrize("length", [3, 333])
def test_cpu_backend_gradients_match_reference_in_the_model(kind, length):
    """A masked-LM training step's parameter gradients: the C++ backward kernels (scan, convolution) against autograd
    through the reference, at awkward lengths, with padding (an attention mask) in one row."""
    torch.manual_seed(2)
    model = CaduceusForMaskedLM(small_config(kind)).train()
    ids = torch.randint(7, 12, (2, length))
    mask = torch.ones_like(ids)
    mask[1, length - length // 3:] = 0
    grads = {}
    for backend in ("cpu", "reference"):
        model.scan_backend = backend
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids, attention_mask=mask).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["cpu"].keys() == grads["reference"].keys() and len(grads["cpu"]) > 10
    for name, want in grads["reference"].items():
        assert max_diff(grads["cpu"][name], want) <= 1e-4 * max(1.0, want.abs().max().item()), name


@pytest.mark.parametrize("kind", ["ps", "mamba2"])
def test_rcps_model_stays_equivariant_with_cpu_backend(kind):
    torch.manual_seed(1)
    model = CaduceusModel(small_config(kind)).eval()
    model.scan_backend = "cpu"
    ids = torch.randint(7, 12, (2, 777))
    rc_ids = reverse_complement_ids(ids, torch.tensor(model.config.complement_ids))
    with torch.no_grad():
        h, h_rc = model(ids).last_hidden_state, model(rc_ids).last_hidden_state
    assert max_diff(h_rc, flip_strands(h)) <= 1e-5


COMPILING = "compiling the CPU scan kernel"


def run_python(code: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    "Run `code` in a fresh interpreter of this environment (with `env` added), capturing its output."
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **env})


def test_an_up_to_date_build_is_not_compiled_again():
    library = fastscan.build_kernels()  # compiles here if this environment has no build yet
    done = run_python("from dnallm_nb.scan import resolve_scan_backend\n"
                      "print(resolve_scan_backend('auto', 'cpu').name)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu"]
    assert COMPILING not in done.stderr
    assert fastscan.build_kernels() == library


def test_each_environment_keeps_its_own_build(monkeypatch):
    "Another venv, torch, compiler or flags gets another folder (beside this one); the same ones find the same."
    here = fastscan.kernel_build_dir()
    assert fastscan.kernel_build_dir(prefix=sys.prefix) == here
    other_venv = fastscan.kernel_build_dir(prefix="/another/venv")
    assert other_venv != here and other_venv.parent == here.parent
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "0.0.1")
        assert fastscan.kernel_build_dir() != here
    with monkeypatch.context() as m:
        m.setenv("CXX", "clang++")
        assert fastscan.kernel_build_dir() != here
    with monkeypatch.context() as m:
        m.setattr(fastscan, "kernel_build_flags", lambda: ["-O2"])
        assert fastscan.kernel_build_dir() != here


def test_a_failed_build_warns_and_falls_back_to_the_reference(tmp_path):
    "No compiler: the build fails, one warning names the fix, and a golden model gives upstream's logits anyway."
    code = f"""
import torch
from safetensors.torch import load_file
from dnallm_nb.modeling import CaduceusForMaskedLM
folder = {str(GOLDEN / "caduceus-ph-tiny")!r}
golden = load_file(folder + "/golden.safetensors")
model = CaduceusForMaskedLM.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(golden["short.input_ids"]).logits
print(model.scan_backend, (logits - golden["short.logits"]).abs().max().item())
"""
    done = run_python(code, CXX=str(tmp_path / "no-such-compiler"), **{fastscan.KERNEL_CACHE_ENV: str(tmp_path)})
    assert done.returncode == 0, done.stderr
    backend, error = done.stdout.split()
    assert backend == "reference"
    assert float(error) <= TOL
    assert COMPILING in done.stderr
    assert done.stderr.count("the 'cpu' scan backend is unavailable, falling back to 'reference'") == 1
    assert "C++ compiler" in done.stderr


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(tmp_path):
    "torch waits forever on a build lock; one older than STALE_BUILD_LOCK_SECONDS is removed (here the build then fails)."
    code = """
import os, time
from dnallm_nb import fastscan
folder = fastscan.kernel_build_dir()
folder.mkdir(parents=True)
(folder / "lock").touch()
old = time.time() - 2 * fastscan.STALE_BUILD_LOCK_SECONDS
os.utime(folder / "lock", (old, old))
try:
    fastscan.build_kernels()
except fastscan.FastScanBuildError:
    print("failed", (folder / "lock").exists())
"""
    done = run_python(code, timeout=120, CXX=str(tmp_path / "no-such-compiler"),
                      **{fastscan.KERNEL_CACHE_ENV: str(tmp_path)})
    assert done.stdout.split() == ["failed", "False"], done.stderr
