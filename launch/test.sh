#!/usr/bin/env bash
# Command 2 of the README: set up the environment (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k shards` or `-m "not distributed"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
# The SLURM tests (and the SLURM part of the multinode tests) need Debian's slurm and munge; install
# them where we can (root, apt-get), unless the run leaves those tests out. Where they cannot be
# installed, the tests skip with the reason.
case " $* " in
  *"not slurm"*) ;;
  *) bash launch/slurm/testbed.sh install >/dev/null 2>&1 \
       || echo "[test] SLURM/MUNGE not installed (needs root and apt-get): the slurm tests will be skipped" ;;
esac
# The multinode tests build two hosts from network namespaces (tests/netns.py): root and iproute2.
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "[test] not root or no iproute2 'ip': the multinode tests will be skipped"
fi
python -m pytest tests -c tests/pytest.ini "$@"
