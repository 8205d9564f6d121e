#!/usr/bin/env bash
# The whole test command: export check, notebook tests, pytest, docs build + browser check.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
start=$(date +%s)
step() { echo; echo "=== $1 [$(( $(date +%s) - start ))s]"; }
tree_state() { git status --porcelain --untracked-files=all; git diff | sha1sum; }

step "nbdev_export: the library must match the notebooks"
before=$(tree_state)
nbdev_export
after=$(tree_state)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev_export changed the working tree; edit the notebooks, export, and commit both:"
  diff <(echo "$before") <(echo "$after") || true
  exit 1
fi

step "ruff: the exported module is lint-clean"
ruff check dnallm_nb

step "nbdev_test: every notebook runs"
nbdev_test --timing

step "pytest"
python -m pytest -q -m "not docs"

step "docs build"
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
python scripts/build_docs.py

step "docs site in headless Chromium"
python -m pytest -q -m docs

echo; echo "TOTAL WALL TIME: $(( $(date +%s) - start ))s"
