#!/usr/bin/env bash
# Command 2 of the README: set up the environment (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k shards` or `-m "not distributed"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
python -m pytest tests -c tests/pytest.ini "$@"
