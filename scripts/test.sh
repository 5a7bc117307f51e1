#!/usr/bin/env bash
# Install what the tests need (CPU torch pinned by constraints.txt) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[train,test]"
export RAY_AUTH_MODE=disabled
unset RAY_ADDRESS
python -m ruff check rayorch tests benchmarks
python -m pytest -q -p no:cacheprovider "$@"
