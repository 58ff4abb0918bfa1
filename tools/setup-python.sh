#!/usr/bin/env bash
# Create (or refresh) the Python venv for reidcam's tools: tools/.venv by default,
# or $REIDCAM_VENV. Idempotent: a venv whose requirements are already installed is left as is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${REIDCAM_VENV:-$here/.venv}
req=$here/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$req"
echo "$want" > "$stamp"
echo "python tools ready in $venv" >&2
