"""The tutorials in nbs/tutorials/ run top to bottom under a real Jupyter kernel, as a person running them in JupyterLab would
("Run All"): quickly by default, with full-size runs behind a flag at the top (issues 8 and 26)."""
import configparser
import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parents[1] / "nbs" / "tutorials"
EXPECTED = ["01_load_models.ipynb", "02_rc_equivariance.ipynb", "03_embeddings_from_fasta.ipynb", "04_probing_arabidopsis.ipynb"]
SKIP_FLAG = "#| notest"  # settings.ini tst_flags: a cell the tests skip; a tutorial has none, since "Run All" runs every cell
OPT_IN = {"04_probing_arabidopsis.ipynb": "FULL_SIZE"}  # tutorials with a full-size run, and the flag at the top that turns it on
PYTHON_NAMES = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}  # jupyter_client runs these as sys.executable


def runs_this_interpreter(argv: list[str]) -> bool:
    "Whether a kernelspec's argv starts this test's Python (jupyter_client maps a bare 'python' to sys.executable)."
    return bool(argv) and (argv[0] in PYTHON_NAMES or Path(argv[0]).resolve() == Path(sys.executable).resolve())


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    "Environment in which the kernel named python3 is this interpreter's ipykernel (pointed at one if the installed spec is not)."
    patch = pytest.MonkeyPatch()
    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
        ok = runs_this_interpreter(spec.argv)
    except NoSuchKernel:
        ok = False
    if not ok:  # no python3 kernelspec, or one for another Python: put one for this interpreter first on JUPYTER_PATH
        kernels = tmp_path_factory.mktemp("jupyter")
        (kernels / "kernels" / "python3").mkdir(parents=True)
        (kernels / "kernels" / "python3" / "kernel.json").write_text(json.dumps(
            {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
             "display_name": "Python 3 (ipykernel)", "language": "python"}))
        patch.setenv("JUPYTER_PATH", str(kernels), prepend=os.pathsep)
    patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # inline plots, as in JupyterLab
    patch.setenv("HF_HUB_OFFLINE", "1")  # the tutorials never need the hub; don't wait on it
    yield
    patch.undo()


def test_tutorials_present():
    "The four tutorials exist, and export nothing (no default_exp): they are docs pages, not modules."
    assert sorted(p.name for p in TUTORIALS.glob("*.ipynb")) == EXPECTED
    for name in EXPECTED:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        assert not any("default_exp" in c.source or "#| export" in c.source for c in nb.cells), name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{name} needs a title cell"


def test_jupyterlab_is_a_runtime_requirement():
    "After `make demo` (which installs the package, not its dev extras), `jupyter lab nbs/` works."
    cfg = configparser.ConfigParser()
    cfg.read(TUTORIALS.parents[1] / "settings.ini")
    assert "jupyterlab" in cfg["DEFAULT"]["requirements"].split() and importlib.util.find_spec("jupyterlab")


@pytest.mark.parametrize("name", EXPECTED)
def test_full_size_runs_are_opt_in(name):
    "Run All never meets a cell the tests skip; a full-size run waits for its flag, which says how long the run takes."
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert not [src for src in code if SKIP_FLAG in src], f"{name}: `#| notest` cells would run under Run All; use a flag"
    if name in OPT_IN:
        flag = OPT_IN[name]
        setting = next((line for src in code[:4] for line in src.splitlines() if line.startswith(f"{flag} = ")), None)
        assert setting and setting.startswith(f"{flag} = False") and "minutes" in setting, f"{name}: {setting!r}"


@pytest.mark.parametrize("name", EXPECTED)
def test_tutorial_runs_in_jupyter_kernel(name, kernel_env):
    "Execute the whole tutorial in the python3 kernel with cwd = nbs/tutorials, as Run All would; any cell error fails."
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    check = f"import sys\nassert sys.prefix == {sys.prefix!r}, f'kernel python3 runs {{sys.executable}}, not this venv'"
    nb.cells.insert(0, nbformat.v4.new_code_cell(check))  # the kernel really is this interpreter
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(TUTORIALS)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name}: a cell failed under the Jupyter kernel:\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert name == "01_load_models.ipynb" or images >= 2, f"{name} shows {images} plots; tutorials 2-4 are meant to show theirs"
    if name in OPT_IN:  # the full-size run was skipped, and said so
        last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert last.startswith("Full-size run skipped") and f"set {OPT_IN[name]} = True" in last, last
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "\r" not in texts  # no carriage-return progress bars: progress is printed as lines
