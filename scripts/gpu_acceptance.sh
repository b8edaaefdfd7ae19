#!/usr/bin/env bash
# Check a new GPU machine: versions, GPU tests, collectives, multi-process training, a ResNet-50
# run with stop and resume, clustering and step throughput, in at most 9 minutes, ending with a
# pass/fail summary (exit status 1 when a part failed). Uses the Python that is there (python3,
# or $PYTHON) and runs the package from this source tree; installs nothing.
#   bash scripts/gpu_acceptance.sh [--data DIR] [--out DIR] [--dry-run]
# --data: a Market-1501 layout folder (e.g. market1501-mini); without it a synthetic set is written.
# --dry-run: the same parts on the CPU with tiny sizes, into --out or a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_acceptance.py "$@"
