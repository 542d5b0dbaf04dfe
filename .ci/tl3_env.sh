#!/usr/bin/env bash
# Build (once) a virtual environment with TransformerLens 3 and run the hooking tests in it.
#
#   bash .ci/tl3_env.sh                 # build .venv-tl3 if needed, run tests/test_hooks.py
#   bash .ci/tl3_env.sh -x              # options are passed to pytest
#   bash .ci/tl3_env.sh tests/x.py -k y # other test files instead of the default ones
#   TL3_BUILD_ONLY=1 bash .ci/tl3_env.sh
#
# The main environment tests TransformerLens 4 (TransformerBridge); this one tests
# TransformerLens 3 (HookedTransformer). The venv is rebuilt only when this script's
# pins change (a stamp file records them), so a second run starts the tests at once.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${TL3_VENV:-.venv-tl3}"
PYTHON="${PYTHON:-python3}"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN="torch==2.13.0"
# 3.9.0 is the last 3.x release; it needs transformers>=5.9 and torch>=2.6.
TL3_PIN="transformer-lens==3.9.0"
STAMP="$VENV/.saehooks-stamp"
WANT="$TORCH_PIN $TL3_PIN pytest $(sha1sum pyproject.toml | cut -c1-12)"

if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "tl3_env: building $VENV ($TL3_PIN)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${PIP[@]}" "$TORCH_PIN"
    # Keep torch where it is while the rest resolves.
    "${PIP[@]}" "$TL3_PIN" "$TORCH_PIN" pytest
    "${PIP[@]}" --no-deps -e .
    echo "$WANT" > "$STAMP"
fi

"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version
import torch, transformer_lens  # noqa: F401
tl = version("transformer-lens")
assert tl.startswith("3."), f"expected TransformerLens 3.x in the TL3 venv, found {tl}"
print(f"tl3_env: transformer-lens {tl}, torch {torch.__version__}")
EOF

[[ -n "${TL3_BUILD_ONLY:-}" ]] && exit 0
has_path=""
for arg in "$@"; do [[ "$arg" != -* ]] && has_path=1; done
if [[ -z "$has_path" ]]; then
    # The hooking tests, and the TL3 loader's own; files not written yet are skipped.
    for f in tests/test_hooks.py tests/test_models_tl3.py tests/test_io_hooked.py; do
        [[ -f "$f" ]] && set -- "$@" "$f"
    done
fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
