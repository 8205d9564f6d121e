"""The docs site: `scripts/build_docs.py` turns every notebook into a page of `_docs/`, which must render in a browser.

Build the site first (`make docs`), then run `pytest -m docs`: these tests open the pages in headless Chromium
(Debian package `chromium`) and read the built HTML; two more build small synthetic sites to check that nbdev's
directives are honoured and that a failing notebook fails the build.

What a reader must never meet: a stderr block that is noise (only cells demonstrating an error keep theirs), raw
LaTeX where math should be, a path of the machine that built the site, or content running past its column.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from configparser import ConfigParser
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
CFG = ConfigParser()
CFG.read(ROOT / "settings.ini")
SITE = ROOT / CFG["DEFAULT"].get("doc_path", "_docs")
NBS = ROOT / CFG["DEFAULT"].get("nbs_path", "nbs")
LIB = ROOT / CFG["DEFAULT"]["lib_path"]
BUILD = [sys.executable, str(ROOT / "scripts" / "build_docs.py")]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars"]
WINDOW = (1280, 900)
VENV = {sys.prefix, str(Path(sys.prefix).resolve())} if sys.prefix != sys.base_prefix else set()  # not /usr: no venv
MACHINE_PATHS = sorted({str(ROOT), str(Path.home()), *VENV} - {"/", ""}, key=len, reverse=True)
TEMP_PATH = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/(tmp|ipykernel_|pytest-)")  # tempfile's folders
RAW_LATEX = re.compile(r"\$\$|\\(frac|mathrm|text|Delta|sum|log|langle|rangle|qquad|top|mid)\b|\\[()\[\]]")

# Run in each page by Chromium once it has loaded: what a reader would see, measured, as JSON on <body data-site-check>.
# Overflow: an element that reaches past the content column by more than furo's own bleed (headings and table wrappers
# have -8 px margins) without a scrolling ancestor inside the column.
SITE_CHECK_JS = """
window.addEventListener("load", () => {
  const main = document.querySelector("article[role=main]") || document.querySelector("article");
  const describe = el => `<${el.tagName.toLowerCase()} class="${el.className}">: ${el.textContent.trim().slice(0, 80)}`;
  const scrolls = (el) => { for (let a = el.parentElement; a && a !== main; a = a.parentElement)
      if (getComputedStyle(a).overflowX !== "visible") return true; return false; };
  const right = main.getBoundingClientRect().right;
  const overflow = [...main.querySelectorAll("*")].filter(el => el.getBoundingClientRect().right > right + 16 && !scrolls(el))
                                                  .filter((el, _, all) => !all.includes(el.parentElement)).map(describe);
  if (document.documentElement.scrollWidth > window.innerWidth + 1) overflow.push(`the page is ${document.documentElement.scrollWidth}px wide`);
  const stderr = [...main.querySelectorAll(".stderr")].filter(el => !el.closest(".tag_keep-stderr")).map(describe);
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {acceptNode: t =>
      t.parentElement.closest("pre, code, script, style, math") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const prose = []; while (walker.nextNode()) prose.push(walker.currentNode.textContent);
  document.body.dataset.siteCheck = JSON.stringify({overflow, stderr, prose: prose.join(" "), math: main.querySelectorAll("math").length});
});
"""


# ---- what the site should contain, read from the notebooks themselves --------------------------------------------

def notebooks(nbs: Path = NBS) -> list[Path]:
    "Notebooks nbdev documents (relative to `nbs`): recursive, skipping names that start with `_` or `.`."
    return sorted((p.relative_to(nbs) for p in nbs.rglob("*.ipynb")
                   if not any(part.startswith(("_", ".")) for part in p.relative_to(nbs).parts)),
                  key=lambda p: p.as_posix())


def page_of(nb: Path) -> Path:
    "nbdev's page name for a notebook: numeric prefix dropped, lower case (`00_dna.ipynb` -> `dna.html`)."
    return nb.with_name(re.sub(r"^\d+[a-zA-Z0-9]*_", "", nb.name.lower())).with_suffix(".html")


def heading(nb: Path, nbs: Path = NBS) -> tuple[str, str | None]:
    "The notebook's first `# Title` heading and the `> description` line of that cell, as plain text."
    for cell in json.loads((nbs / nb).read_text())["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and (m := re.search(r"^#\s+(\S.*?)\s*$", src, re.M)):
            d = re.search(r"^>\s+(\S.*?)\s*$", src, re.M)
            return plain(m.group(1)), plain(d.group(1)) if d else None
    return nb.stem, None


def plain(text: str) -> str:
    "Text as a browser shows it, for comparisons: no markdown code/emphasis marks, straight quotes, single spaces."
    text = re.sub(r"`([^`]*)`", r"\1", text).replace("**", "")
    for a, b in {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00b6": "", "\u00a0": " ",
                 "\u2026": "...", "\u2013": "--", "\u2014": "---"}.items():  # Sphinx's smart quotes and dashes
        text = text.replace(a, b)
    return " ".join(text.split())


def squash(text: str) -> str:
    "`plain` text without any whitespace: HTML splits text at tags (code spans, tokens), so compare without spaces."
    return re.sub(r"\s+", "", plain(text))


# ---- parsing HTML ----------------------------------------------------------------------------------------------

class Page(HTMLParser):
    "What the tests need from one HTML document: ids, links, the h1, the lead paragraph, the sidebar's links, text."
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.refs, self.sidebar, self.texts = set(), [], [], {"h1": [], "lead": [], "all": [], "toc": []}
        self.check: dict = {}  # what SITE_CHECK_JS measured, when the page ran it
        self.stack: list[set[str]] = []  # for each open element: which regions (h1, lead, sidebar) it is inside
        self.feed(html)
        self.h1, self.lead = plain("".join(self.texts["h1"])), plain("".join(self.texts["lead"]))
        self.text = plain(" ".join(self.texts["all"]))
        self.toc = {plain(t) for t in self.texts["toc"]}  # entries of furo's "on this page" list
        self.flat = squash(self.text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.ids.add(a["name"])
        if tag == "body" and a.get("data-site-check"): self.check = json.loads(a["data-site-check"])
        for attr in ("href", "src"):
            if a.get(attr) is not None and tag in ("a", "img", "link", "script"): self.refs.append((tag, a[attr]))
        inside = set(self.stack[-1]) if self.stack else set()
        classes = (a.get("class") or "").split()
        if tag == "h1" and not self.texts["h1"]: inside.add("h1")
        if "lead" in classes and not self.texts["lead"]: inside.add("lead")
        if "sidebar-tree" in classes: inside.add("sidebar")
        if "toc-tree" in classes: inside.add("toc")
        if tag == "a" and "sidebar" in inside and a.get("href"): self.sidebar.append(a["href"])
        if tag not in self.VOID: self.stack.append(inside)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack: self.stack.pop()

    def handle_data(self, data):
        inside = self.stack[-1] if self.stack else set()
        for region in ("h1", "lead", "toc"):
            if region in inside: self.texts[region].append(data)
        self.texts["all"].append(data)


@cache
def parsed(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def resolve(page: Path, href: str) -> tuple[Path, str] | None:
    "The file and fragment a relative link on `page` points to; None for external links."
    parts = urlsplit(href)
    if parts.scheme or href.startswith("//"): return None  # http(s), mailto, data, javascript: not ours
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if parts.path.endswith("/") or target.is_dir(): target = target / "index.html"
    return target, unquote(parts.fragment)


# ---- fixtures: the built site, the browser ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def site() -> Path:
    if not (SITE / "index.html").exists():
        pytest.fail(f"the docs site is not built: {SITE / 'index.html'} is missing. Run `make docs` "
                    f"(i.e. .venv/bin/python scripts/build_docs.py) first, then `pytest -m docs`.")
    return SITE


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        pytest.fail("headless Chromium is needed to check the docs site: `apt-get install -y chromium` "
                    "(scripts/test.sh installs it when missing).")
    return exe


def run_chromium(exe: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile each time: runs can go in parallel
        return subprocess.run([exe, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=False)


def instrumented(page: Path, folder: Path, extra: str = "") -> Path:
    "A copy of `page` in `folder` that loads everything from the page's own folder and runs SITE_CHECK_JS; `extra` HTML goes before the h1."
    html = page.read_text(encoding="utf-8")
    html = html.replace("<head>", f'<head><base href="{page.parent.as_uri()}/">', 1).replace("<h1>", extra + "<h1>", 1)
    copy = folder / page.relative_to(SITE)
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(html.replace("</body>", f"<script>{SITE_CHECK_JS}</script></body>", 1), encoding="utf-8")
    return copy


def render(chromium: str, page: Path, folder: Path, extra: str = "") -> Page:
    "`page` as headless Chromium renders it (`--dump-dom`) at WINDOW size, with SITE_CHECK_JS's measurements."
    res = run_chromium(chromium, f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", "--dump-dom",
                       instrumented(page, folder, extra).as_uri())
    assert res.returncode == 0 and "<html" in res.stdout, f"Chromium could not render {page}:\n{res.stderr[-2000:]}"
    dom = Page(res.stdout)
    assert dom.check, f"the page check did not run in {page}"
    return dom


@pytest.fixture(scope="session")
def doms(site, chromium, tmp_path_factory) -> dict[Path, Page]:
    "Each notebook's page as headless Chromium renders it, parsed, with what SITE_CHECK_JS measured."
    pages = [site / page_of(nb) for nb in notebooks() if (site / page_of(nb)).exists()]
    folder = tmp_path_factory.mktemp("instrumented")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(pages, pool.map(lambda page: render(chromium, page, folder), pages)))


# ---- the built site --------------------------------------------------------------------------------------------

def test_every_notebook_has_a_page(site):
    nbs = notebooks()
    assert Path("index.ipynb") in nbs, "nbs/index.ipynb (the landing page) is missing"
    missing = [f"{nb} -> {page_of(nb)}" for nb in nbs if not (site / page_of(nb)).is_file()]
    assert not missing, f"notebooks without a page in {site} (rebuild with `make docs`): {missing}"


@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.as_posix())
def test_page_renders_title_lead_and_sidebar(nb, site, doms):
    page = site / page_of(nb)
    assert page in doms, f"no page {page} for {nb}"
    dom, (title, description) = doms[page], heading(nb)
    assert dom.h1 == title, f"{page.name}: the page title is {dom.h1!r}, the notebook's heading is {title!r}"
    if description: assert dom.lead == description, f"{page.name}: lead paragraph {dom.lead!r} != {description!r}"
    linked = {resolve(page, h)[0] for h in dom.sidebar if resolve(page, h)}
    expected = {site / page_of(n) for n in notebooks() if n != Path("index.ipynb")}
    assert expected <= linked, f"{page.name}: the sidebar lacks {sorted(str(p.relative_to(site)) for p in expected - linked)}"


def test_sidebar_follows_notebook_order(site, doms):
    "Top-level notebooks in filename order, then each sub-folder's (e.g. tutorials) in filename order."
    index = site / "index.html"
    order = [n for n in notebooks() if n != Path("index.ipynb")]
    order = [n for n in order if n.parent == Path(".")] + [n for n in order if n.parent != Path(".")]
    pages = [site / page_of(n) for n in order]
    seen = [t for t in (resolve(index, h)[0] for h in doms[index].sidebar if resolve(index, h)) if t in pages]
    assert list(dict.fromkeys(seen)) == pages


def test_landing_page_screenshot_is_a_real_page(site, chromium):
    shot = ROOT / "_build" / "docs-landing.png"  # kept for people (and CI artifacts) to look at
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    res = run_chromium(chromium, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}",
                       (site / "index.html").as_uri())
    assert shot.exists(), f"Chromium wrote no screenshot:\n{res.stderr[-2000:]}"
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (WINDOW[1], WINDOW[0])
    background = np.bincount(img.astype(int).ravel()).argmax()
    ink = (np.abs(img - background) > 40).mean()  # share of pixels that are text, rules, code blocks...
    assert img.std() > 10 and 0.01 < ink < 0.6, f"blank-looking screenshot: std {img.std():.1f}, ink {ink:.3f}"


def test_no_broken_internal_links(site):
    "Every relative <a href>, <img src>, <link href>, <script src> of every page points at an existing file and id."
    pages = sorted(site.rglob("*.html"))
    broken = []
    for page in pages:
        for tag, ref in parsed(page).refs:
            if not (target := resolve(page, ref)): continue
            path, frag = target
            if not path.is_file(): broken.append(f"{page.relative_to(site)}: <{tag}> {ref} (no such file)")
            elif frag and path.suffix == ".html" and frag not in parsed(path).ids:
                broken.append(f"{page.relative_to(site)}: <{tag}> {ref} (no id {frag!r} in {path.name})")
    assert len(pages) >= len(notebooks())
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_show_doc_documents_reverse_complement(site):
    page = parsed(site / "dna.html")
    assert "reverse_complement" in page.ids
    assert "defreverse_complement(seq:str)->str:" in page.flat  # the signature, as a code block
    assert squash("Reverse complement of IUPAC DNA text, keeping each base's case") in page.flat


def test_every_exported_function_and_class_has_an_api_entry(site):
    """Each public def/class in a module's __all__ has a show_doc entry (anchor + docstring) on its notebook's page,
    listed in the page's "on this page" contents."""
    import ast
    modidx = ast.literal_eval((LIB / "_modidx.py").read_text().split("d = ", 1)[1])
    missing = []
    for mod, syms in modidx["syms"].items():
        src = ROOT / next(iter(syms.values()))[1]
        if not src.exists(): missing.append(f"{mod}: {src} is missing (run nbdev_export)"); continue
        tree = ast.parse(src.read_text())
        exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                         and any(getattr(t, "id", "") == "__all__" for t in n.targets)), [])
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name not in exported: continue
            if any("patch" in ast.unparse(d) for d in node.decorator_list): continue
            loc = syms.get(f"{mod}.{node.name}", (None,))[0]
            if loc is None: continue
            page_name, _, anchor = loc.partition("#")
            if not (site / page_name).exists(): missing.append(f"{mod}.{node.name}: no page {page_name}"); continue
            page = parsed(site / page_name)
            doc = squash((ast.get_docstring(node) or "").split("\n")[0])
            if anchor not in page.ids: missing.append(f"{mod}.{node.name}: no #{anchor} on {page_name}")
            elif doc and doc not in page.flat: missing.append(f"{mod}.{node.name}: docstring not on {page_name}")
            elif node.name not in page.toc: missing.append(f"{mod}.{node.name}: not in the contents of {page_name}")
    assert not missing, "exported symbols without an API entry:\n" + "\n".join(missing)


def test_no_stderr_noise(doms):
    "stderr blocks appear only in cells that demonstrate an error (`#| keep_stderr` or `#| error: true`)."
    noise = {page.name: dom.check["stderr"] for page, dom in doms.items() if dom.check["stderr"]}
    assert not noise, f"stderr blocks that no cell asked to show (fix the warning, or mark the cell `#| keep_stderr`): {noise}"


def test_no_frozen_progress_bars(doms):
    "A progress bar on a static page is a widget's text fallback, frozen at 0%: the build drops widget outputs."
    bars = {page.name: m.group(0) for page, dom in doms.items() if (m := re.search(r"\d+%\|[^|]*\|", dom.text))}
    assert not bars, f"progress bars on {bars}"


def test_math_is_rendered_offline(doms):
    "Math arrives as MathML (no script, no network) on every page whose notebook has display math; no raw LaTeX anywhere."
    with_math = {SITE / page_of(nb) for nb in notebooks() if "$$" in (NBS / nb).read_text()}
    assert with_math, "no notebook has display math: this test needs one"
    missing = [p.name for p in with_math if doms[p].check["math"] == 0]
    assert not missing, f"display math not rendered on {missing}"
    raw = {page.name: m.group(0) for page, dom in doms.items() if (m := RAW_LATEX.search(dom.check["prose"]))}
    assert not raw, f"raw LaTeX in the text of {raw}"
    remote = {page.name: ref for page, dom in doms.items() for tag, ref in dom.refs
              if tag in ("script", "link", "img") and urlsplit(ref).scheme in ("http", "https")}
    assert not remote, f"pages that load files from the network: {remote}"


def test_no_build_machine_paths(site):
    "No file of the site names a folder of the machine that built it (repository, venv, home, temporary folders)."
    found = []
    for f in sorted(p for p in site.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".txt", ".json", ".css", ".svg")):
        text = f.read_text(encoding="utf-8", errors="replace")
        found += [f"{f.relative_to(site)}: {path}" for path in MACHINE_PATHS if path in text]
        found += [f"{f.relative_to(site)}: {m.group(0)}..." for m in [TEMP_PATH.search(text)] if m]
    assert not found, "build-machine paths in the site:\n" + "\n".join(found)


def test_content_stays_in_its_column(doms, chromium, tmp_path):
    "Wide tables, code and outputs scroll inside the content column; nothing runs past it at 1280 px."
    control = render(chromium, SITE / "index.html", tmp_path, extra='<p style="width: 3000px">a deliberately wide line</p>')
    assert any("a deliberately wide line" in o for o in control.check["overflow"])  # the check sees what it should
    wide = {page.name: dom.check["overflow"][:3] for page, dom in doms.items() if dom.check["overflow"]}
    assert not wide, f"content wider than its column: {wide}"


def test_outputs_are_executed_and_hidden_cells_removed(site):
    dna = parsed(site / "dna.html").text
    index = parsed(site / "index.html")
    assert "make demo" in index.text and "make test" in index.text                 # the README's two commands
    assert "ProbeResult(binary, logistic, n=200, folds=5, auroc=" in index.text   # the quick start's real output...
    assert "llr" in index.text and "importdnallm_nb" not in index.flat        # ...and its table; the hidden check is not shown
    assert "TTAgggCAT" in dna                                 # output of reverse_complement("ATGcccTAA")
    assert "_COMPLEMENT_TABLE = str.maketrans" not in dna     # `#| export` source is not shown


# ---- the build itself, on small synthetic notebook folders ---------------------------------------------------------

def write_nb(path: Path, cells: list[tuple[str, str]]):
    "Write a notebook from (cell_type, source) pairs."
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = {"cells": [{"cell_type": t, "metadata": {}, "source": s, "id": f"c{i}",
                     **({"outputs": [], "execution_count": None} if t == "code" else {})} for i, (t, s) in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def build_site(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*BUILD, "--nbs", str(tmp_path / "nbs"), "--out", str(tmp_path / "site"),
                           "--work", str(tmp_path / "work"), "--jobs", "1"], capture_output=True, text=True, timeout=600,
                          check=False)


def test_build_honours_nbdev_directives(tmp_path):
    nbs = tmp_path / "nbs"
    write_nb(nbs / "index.ipynb", [("markdown", "# Synthetic site\n\n> The landing page."),
                                   ("markdown", "See [the plots](01_plots.ipynb).")])
    write_nb(nbs / "01_plots.ipynb", [
        ("markdown", "# Plots & directives\n\n> Every directive, once."),
        ("code", "#| hide\nHIDDEN_MARKER = 1"),
        ("code", "#| export\ndef double(x: int) -> int:\n    \"Twice `x`, as an int.\"\n    return 2 * x"),
        ("code", "print(double(21) * 1000 + HIDDEN_MARKER)"),
        ("code", "#| exports\ndef triple(x: int) -> int:\n    \"Three times `x`.\"\n    return 3 * x"),
        ("code", "offset = 7  #| hide_line\nprint(triple(offset))"),
        ("code", "#| filter_stream noisy\nprint('kept line'); print('a noisy line')"),
        ("code", "#| notest\nraise RuntimeError('notest cells are not executed by the docs build')"),
        ("code", "#| echo: false\nprint('echo-false-' + 'output')"),
        ("code", "#| output: asis\n#| echo: false\nprint('**asis bold**')"),
        ("code", "print(open('data.txt').read())"),  # runs in the notebook's own folder
        ("code", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.title('a plot'); plt.show()"),
        ("code", "import sys\nprint('stdout is shown'); print('warning noise', file=sys.stderr)"),
        ("code", "#| keep_stderr\nimport sys\nprint('error: an intended error message', file=sys.stderr)"),
        ("code", f"from IPython.display import HTML\nprint({str(ROOT)!r} + '/nbs/x.ipynb', {tempfile.gettempdir()!r} + '/tmpab_12/out.tsv')\n"
                 f"HTML('<b>html ' + {str(ROOT)!r} + '/y</b>')"),
        ("code", "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='a frozen bar', disable=False): pass"),
        ("markdown", "Display math:\n\n$$y_t = \\frac{a}{b} + \\mathrm{LLR}$$\n\nand inline $x^2$."),
    ])
    (nbs / "data.txt").write_text("read-from-the-notebook-folder")
    write_nb(nbs / "tutorials" / "01_walk.ipynb", [("markdown", "# Walkthrough"), ("markdown", "Back to [plots](../01_plots.ipynb).")])
    res = build_site(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    site = tmp_path / "site"
    assert {p.relative_to(site) for p in site.rglob("*.html")} >= {Path("index.html"), Path("plots.html"), Path("tutorials/walk.html")}
    html, page = (site / "plots.html").read_text(), parsed(site / "plots.html")
    code = page.flat
    assert page.h1 == "Plots & directives" and page.lead == "Every directive, once."
    assert "HIDDEN_MARKER=1" not in code and "42001" in page.text               # the hidden cell ran, unseen
    assert "double" in page.ids and "Twicex,asanint." in code         # show_doc entry of an exported def
    assert "return2*x" not in code                                              # exported source is not shown
    assert "triple" in page.ids and "return3*x" in code and "Exported source" in html  # folded source
    assert "21" in page.text and "offset=7" not in code                         # hide_line: runs, not shown
    assert page.text.count("kept line") == 2 and page.text.count("a noisy line") == 1  # filter_stream: source + output, source only
    assert "notest cells are not executed" in page.text and "Traceback" not in html  # shown, not run
    assert "echo-false-output" in page.text and "print('echo-false-'" not in code
    assert "<strong>asis bold</strong>" in html
    assert "read-from-the-notebook-folder" in page.text
    imgs = [ref for tag, ref in page.refs if tag == "img"]
    assert imgs and all((site / ref).is_file() for ref in imgs), imgs           # the plot, as an image file
    assert ("a", "../plots.html") in parsed(site / "tutorials" / "walk.html").refs
    assert ("a", "plots.html") in parsed(site / "index.html").refs
    assert "Tutorials" in (site / "index.html").read_text()                      # sub-folder section in the sidebar
    assert page.text.count("stdout is shown") == 2 and page.text.count("warning noise") == 1  # stderr noise dropped...
    assert page.text.count("error: an intended error message") == 2               # ...unless the cell keeps it
    assert "<repo>/nbs/x.ipynb <tmp>/out.tsv" in page.text and "html <repo>/y" in page.text and str(ROOT) not in html
    assert page.text.count("a frozen bar") == 1                                 # in the source only: the widget is dropped
    assert html.count("<math") == 2 and not RAW_LATEX.search(page.text)         # MathML...
    assert not [ref for _, ref in page.refs if "mathjax" in ref.lower()]         # ...and no MathJax script
    assert "warning noise" in res.stdout and "stderr not shown: 01_plots.ipynb" in res.stdout  # the build lists what it dropped


def test_build_fails_on_a_notebook_error(tmp_path):
    write_nb(tmp_path / "nbs" / "index.ipynb", [("markdown", "# Broken"), ("code", "1 / 0")])
    res = build_site(tmp_path)
    assert res.returncode != 0
    assert "index.ipynb" in res.stderr and "ZeroDivisionError" in res.stderr, res.stderr
