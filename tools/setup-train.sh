#!/usr/bin/env bash
# Create (or refresh) the venv for the model tools (tools/reidtrain): requirements.txt plus
# requirements-train.txt (PyTorch, pytest) in tools/.venv-train, or $REIDCAM_TRAIN_VENV.
# PyPI's Linux torch wheel is the CUDA build (about 5 GB installed with its NVIDIA libraries);
# it runs on the CPU here. Idempotent: an up-to-date venv is left as is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${REIDCAM_TRAIN_VENV:-$here/.venv-train}
stamp=$venv/.requirements.sha256
want=$(cat "$here/requirements.txt" "$here/requirements-train.txt" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt" -r "$here/requirements-train.txt"
echo "$want" > "$stamp"
echo "model tools ready in $venv (python -m reidtrain, from tools/)" >&2
