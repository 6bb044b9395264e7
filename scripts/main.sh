#!/usr/bin/env bash
# Set up, then run every notebook headlessly at the cpu preset (figures go to figures/,
# executed copies to results/cpu/). Pass another preset as the first argument: ci, cpu or paper.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Idle OpenMP threads sleep instead of spinning, so other programs on the same cores do not
# slow every parallel region down (see docs/benchmarks.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python scripts/run_notebooks.py --preset "${1:-cpu}"
