#!/usr/bin/env bash
# Build (once) a virtual environment with TransformerLens 3 and run the hooking tests in it.
#
#   bash .ci/tl3_env.sh                   # build .venv-tl3 if needed, run the default tests
#   bash .ci/tl3_env.sh -x -q             # options only: passed to pytest with the defaults
#   bash .ci/tl3_env.sh tests/test_x.py   # other test files instead of the default ones
#   TL3_BUILD_ONLY=1 bash .ci/tl3_env.sh  # build only
#
# The main environment tests TransformerLens 4 (TransformerBridge); this one tests
# TransformerLens 3 (HookedTransformer), and that SAELens 6 (which needs TransformerLens
# < 4) reads saehooks files as the same SAE. The venv is rebuilt only when the pins below
# or pyproject.toml's dependencies change (a stamp file records them), so a second run
# starts the tests at once.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${TL3_VENV:-.venv-tl3}"
PYTHON="${PYTHON:-python3}"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN="torch==2.13.0"
# 3.9.0 is the last 3.x release; it needs transformers>=5.9 and torch>=2.6.
TL3_PIN="transformer-lens==3.9.0"
SAELENS_PIN="sae-lens==6.54.12"
STAMP="$VENV/.saehooks-stamp"

# saehooks' requirements and dev extras, less torch and TransformerLens (pinned above).
read_deps() {
    "$PYTHON" -c '
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project.get("optional-dependencies", {}).get("dev", [])
skip = ("torch", "transformer-lens", "transformer_lens")
print("\n".join(d for d in wanted if not d.lower().replace(" ", "").startswith(skip)))
'
}
mapfile -t DEPS < <(read_deps)
if [[ ${#DEPS[@]} -eq 0 ]]; then
    echo "tl3_env: could not read dependencies from pyproject.toml with $PYTHON (needs 3.11+)" >&2
    exit 1
fi
WANT="$TORCH_PIN $TL3_PIN $SAELENS_PIN ${DEPS[*]}"

if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "tl3_env: building $VENV ($TL3_PIN, $SAELENS_PIN)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${PIP[@]}" "$TORCH_PIN"
    # One resolve, with torch held where it is.
    "${PIP[@]}" "$TORCH_PIN" "$TL3_PIN" "$SAELENS_PIN" "${DEPS[@]}"
    # saehooks with its own dependencies, beside sae-lens (which pins TransformerLens < 4):
    # the environment SAELens users have. pyproject admits transformer-lens>=3.9, so pip
    # keeps 3.x.
    "${PIP[@]}" "$TORCH_PIN" "$TL3_PIN" -e .
    echo "$WANT" > "$STAMP"
fi

"$VENV/bin/python" -c '
from importlib.metadata import version
import torch, transformer_lens
tl, sl = version("transformer-lens"), version("sae-lens")
assert tl.startswith("3."), f"expected TransformerLens 3.x in the TL3 venv, found {tl}"
import saehooks
sh = version("saehooks")
print(f"tl3_env: transformer-lens {tl}, sae-lens {sl}, torch {torch.__version__}, saehooks {sh}")
'

if [[ -n "${TL3_BUILD_ONLY:-}" ]]; then
    exit 0
fi
has_path=""
for arg in "$@"; do
    if [[ "$arg" != -* ]]; then has_path=1; fi
done
if [[ -z "$has_path" ]]; then
    # The hooking tests, the TL3 loader's own, and SAELens interop; absent files are skipped.
    for f in tests/test_hooks.py tests/test_error_term.py tests/test_architectures.py \
             tests/test_models_tl3.py tests/test_io_hooked.py \
             tests/test_io_saelens_compat.py tests/test_eval_resume.py \
             tests/test_eval_resume_archs.py; do
        if [[ -f "$f" ]]; then set -- "$@" "$f"; fi
    done
fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
