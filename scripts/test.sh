#!/usr/bin/env bash
# Set up the environment, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${CACL_VENV:-.venv}"/bin/python -m pytest -q "$@"
