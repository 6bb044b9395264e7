#!/usr/bin/env bash
# Create .venv (once) and install the pinned requirements and the package into it.
# Re-running is cheap: nothing is reinstalled while requirements.txt and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.mergenas-installed
wanted=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    .venv/bin/python -m pip install --quiet -r requirements.txt
    .venv/bin/python -m pip install --quiet --no-deps -e .
    .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mergenas)" >/dev/null
    echo "$wanted" > "$stamp"
fi
