#!/usr/bin/env bash
# Set up the environment, then train CACL on the synthetic dataset on the CPU (a few minutes)
# and print mAP before and after training. Extra arguments go to cacl_dist.train (e.g. --set ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cacl_dist.train --config configs/quickstart.yaml "$@"
