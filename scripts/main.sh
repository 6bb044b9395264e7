#!/usr/bin/env bash
# Set up, then run every notebook headlessly at the cpu preset (figures go to figures/,
# executed copies to results/cpu/). Pass another preset as the first argument: ci, cpu or paper.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_notebooks.py --preset "${1:-cpu}"
