#!/usr/bin/env bash
# Set up, then run the test suite and the nbval regression of every notebook (ci preset).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -x -k ops`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The stored notebooks hold the inline backend's figure outputs, so only the unit tests get Agg.
MPLBACKEND=Agg .venv/bin/python -m pytest tests "$@"
.venv/bin/python -m pytest --nbval notebooks/ \
    --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-current-env -p no:cacheprovider
