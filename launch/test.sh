#!/usr/bin/env bash
# Command 2 of the README: set up the environment (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k shards` or `-m "not distributed"`.
# About 13 minutes on 2 idle cores (after a first-run install of about 2 minutes); leave out the
# multi-process tests while iterating: -m "not slow and not distributed and not slurm and not multinode".
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
# Two pytest workers, each taking whole files (tests/conftest.py puts the long multi-process files
# first): the suite is latency-bound for much of its length (process starts, timeouts, SLURM's
# scheduling), so two files at a time use the cores that one leaves idle. RSFM_TEST_WORKERS=N
# sets the number (0: one process, in file order); -n, -s, --pdb or -p no:xdist run in one.
workers=${RSFM_TEST_WORKERS:-$(( $(nproc) >= 2 ? 2 : 0 ))}
parallel=(-n "$workers" --dist loadfile)
for arg in "$@"; do
  case "$arg" in -n|-n[0-9]*|--numprocesses*|-s|--capture=no|--pdb|no:xdist) parallel=() ;; esac
done
[ "$workers" -gt 0 ] || parallel=()
python -m pytest tests -c tests/pytest.ini "${parallel[@]}" "$@"
