#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run the sbatch scripts against real daemons
# (munged, slurmctld, slurmd) instead of trusting that they would work. Everything the cluster
# writes (config, munge key and socket, controller state, slurmd spool, logs, pid files) stays
# in one directory; the daemons talk over loopback on two free ports, so a real SLURM or MUNGE
# on the same machine is left alone. No slurmdbd: finished jobs are queried with
# `scontrol show job` (MinJobAge keeps them for an hour) and recorded by jobcomp/filetxt in
# DIR/log/jobcomp.txt; sacct does not work here.
#
# Run directly:
#   bash launch/slurm/testbed.sh install             apt-get Debian's slurmctld, slurmd,
#                                                    slurm-client and munge when missing (root)
#   bash launch/slurm/testbed.sh start DIR           start the cluster in DIR (created), print
#                                                    `export SLURM_CONF=DIR/slurm.conf`
#   bash launch/slurm/testbed.sh stop DIR            cancel its jobs, stop its daemons
#   bash launch/slurm/testbed.sh run [DIR] -- CMD..  start, run CMD with SLURM_CONF set, stop
#                                                    (default DIR: a new temporary directory,
#                                                    removed afterwards unless CMD failed)
#   bash launch/slurm/testbed.sh exec DIR -- CMD..   run a client command (sbatch, squeue, ...)
#                                                    where the controller is reachable
# or source it: testbed_install, testbed_start DIR [NODES] (exports SLURM_CONF), testbed_stop DIR,
# testbed_logs DIR (tails of the daemons' logs, for failure messages), testbed_exec DIR CMD...
#
# Two nodes (`start DIR --nodes 2`, `run [DIR] --nodes 2 -- CMD`): two "hosts" given as network
# namespaces in RSFM_HOSTS="name:netns:addr name:netns:addr" (tests/netns.py builds them and sets
# it: `python tests/netns.py -- bash launch/slurm/testbed.sh run --nodes 2 -- CMD`). slurmctld
# runs on the first host, one slurmd per host (NodeName = the host's name, NodeAddr = its
# address, `slurmd -N name`), each in its namespace with the host's name as hostname, so a job
# sees what it sees on a cluster: its own node's name, SLURM_JOB_NODELIST naming both, the
# master address resolved through the host's own hosts file. One munged serves both: its socket
# is a file, and network namespaces share the filesystem. Client commands (and `run`'s CMD) run
# on the first host, where the controller's address exists.
#
# Needs root: slurmd starts job steps as the submitting user, and the daemons run as root here
# (SlurmUser=root) so no system account or directory has to be prepared.

TESTBED_PACKAGES=(slurmctld slurmd slurm-client munge)

testbed_have_packages() {
  command -v munged >/dev/null && command -v slurmctld >/dev/null && \
    command -v slurmd >/dev/null && command -v sbatch >/dev/null
}

# Installs the packages when missing. Debian's postinst scripts enable the system munge and
# slurm services; on a machine that runs systemd they start with /etc's config (slurmctld and
# slurmd then fail for want of /etc/slurm/slurm.conf). The testbed never uses them.
testbed_install() {
  testbed_have_packages && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "testbed: SLURM/MUNGE are not installed and installing them needs root" >&2
    return 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "testbed: SLURM/MUNGE are not installed and there is no apt-get to install them" >&2
    return 1
  fi
  echo "testbed: installing ${TESTBED_PACKAGES[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${TESTBED_PACKAGES[@]}" >&2 || return 1
  testbed_have_packages
}

# A TCP port nothing listens on now, away from SLURM's defaults (6817/6818) so a real cluster
# on this machine is not in the way, and above the 20000-39999 that common.sh derives master
# ports from; bash's /dev/tcp answers "is anyone there".
_testbed_free_port() {
  local port
  for _ in $(seq 200); do
    port=$(( 40000 + RANDOM % 10000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"; return 0
    fi
  done
  return 1
}

# Writes DIR/slurm.conf for this machine: one node (its name, CPUs and memory as `slurmd -C`
# reports them) reachable on 127.0.0.1, one default partition.
_testbed_write_conf() {
  local dir=$1 node host ctld_port slurmd_port
  node=$(slurmd -C | head -n1) || return 1         # "NodeName=<host> CPUs=.. RealMemory=.."
  host=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
  ctld_port=$(_testbed_free_port) || return 1
  slurmd_port=$(_testbed_free_port) || return 1
  [ "$slurmd_port" != "$ctld_port" ] || slurmd_port=$(( ctld_port + 1 ))
  cat > "$dir/slurm.conf" <<EOF
# Written by launch/slurm/testbed.sh: a one-node cluster living in $dir.
ClusterName=rsfm-testbed
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
MailProg=/bin/true
# A private munged: its socket, not the system's default one.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmdDebug=info
SlurmctldDebug=info
# Without this, slurmd would read the system's /etc/slurm/plugstack.conf.
PlugStackConfig=$dir/plugstack.conf
# No cgroups (containers rarely delegate them): track a job's processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
# No slurmdbd: finished jobs stay queryable with "scontrol show job" for MinJobAge seconds,
# and every finished job is appended to a text file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MinJobAge=3600
# Job ids (and so common.sh's master ports, 20000 + id % 20000) differ between testbeds run at
# the same time instead of all starting at 1.
FirstJobId=$(( 1000 + RANDOM % 18000 ))
# Schedule on every submission and completion, not on a backfill timer: tests wait less.
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A cancelled job's processes get SIGTERM, then SIGKILL after this many seconds.
KillWait=5
ReturnToService=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  : > "$dir/plugstack.conf"
}

# Two-node mode: RSFM_HOSTS as arrays TESTBED_NAMES, TESTBED_NETNS, TESTBED_ADDRS.
_testbed_parse_hosts() {
  local entry name ns addr
  TESTBED_NAMES=() TESTBED_NETNS=() TESTBED_ADDRS=()
  for entry in ${RSFM_HOSTS:-}; do
    IFS=: read -r name ns addr <<<"$entry"
    [ -n "$name" ] && [ -n "$ns" ] && [ -n "$addr" ] || return 1
    TESTBED_NAMES+=("$name") TESTBED_NETNS+=("$ns") TESTBED_ADDRS+=("$addr")
  done
  [ ${#TESTBED_NAMES[@]} -ge 2 ]
}

# CMD on host I of the two-node mode: in its network namespace, with its name as hostname and
# its hosts file (/etc/netns/NS/hosts) as /etc/hosts. Not `ip netns exec`, which does the same
# but also mounts a fresh /sys without /sys/fs/cgroup, where slurmd's cgroup plugin looks.
_testbed_on_host() {
  local i=$1
  shift
  unshare --mount --uts --propagation private sh -c \
    'ns=$1; { [ ! -f "/etc/netns/$ns/hosts" ] || mount --bind "/etc/netns/$ns/hosts" /etc/hosts; } &&
     hostname "$2" && shift 2 && exec nsenter --net="/run/netns/$ns" "$@"' \
    sh "${TESTBED_NETNS[$i]}" "${TESTBED_NAMES[$i]}" "$@"
}

# Writes DIR/slurm.conf for the two-node mode: the one-node file with the controller on the
# first host's address and one node line per host; each slurmd keeps its pid, spool and log
# apart through %n (its node name).
_testbed_write_conf_nodes() {
  local dir=$1 cpus mem i
  _testbed_write_conf "$dir" || return 1
  cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -n1)
  mem=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  sed -i -e "s|^SlurmctldHost=.*|SlurmctldHost=${TESTBED_NAMES[0]}(${TESTBED_ADDRS[0]})|" \
         -e "s|^SlurmdPidFile=.*|SlurmdPidFile=$dir/run/slurmd-%n.pid|" \
         -e "s|^SlurmdSpoolDir=.*|SlurmdSpoolDir=$dir/spool/%n|" \
         -e "s|^SlurmdLogFile=.*|SlurmdLogFile=$dir/log/slurmd-%n.log|" \
         -e "s|^# Written by launch/slurm/testbed.sh: a one-node cluster|# Written by launch/slurm/testbed.sh: a ${#TESTBED_NAMES[@]}-node cluster|" \
         -e '/^NodeName=/d' -e '/^PartitionName=/d' "$dir/slurm.conf" || return 1
  for i in "${!TESTBED_NAMES[@]}"; do
    echo "NodeName=${TESTBED_NAMES[$i]} NodeAddr=${TESTBED_ADDRS[$i]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    mkdir -p "$dir/spool/${TESTBED_NAMES[$i]}"
  done >> "$dir/slurm.conf"
  local IFS=,
  echo "PartitionName=debug Nodes=${TESTBED_NAMES[*]} Default=YES MaxTime=INFINITE State=UP" >> "$dir/slurm.conf"
  # Where client commands must run (testbed_exec, testbed_stop): the controller's namespace.
  echo "${TESTBED_NETNS[0]}" > "$dir/client.netns"
}

# CMD as a client of DIR's cluster: on the first host in the two-node mode, else here.
testbed_exec() {
  local dir=${1:?testbed_exec DIR CMD...}
  shift
  if [ -f "$dir/client.netns" ]; then
    ip netns exec "$(cat "$dir/client.netns")" "$@"
  else
    "$@"
  fi
}

# Prints the last lines of the daemons' logs (and of munged's), for failure messages.
testbed_logs() {
  local dir=${1:-${TESTBED_DIR:?testbed_logs DIR}} f
  for f in "$dir"/log/slurmctld.log "$dir"/log/slurmd*.log "$dir"/log/munged.log; do
    [ -f "$f" ] || continue
    echo "==== tail $f"
    tail -n "${TESTBED_LOG_LINES:-40}" "$f"
  done
}

_testbed_fail() {
  echo "testbed: $2" >&2
  testbed_logs "$1" >&2
  testbed_stop "$1"
  return 1
}

# Starts munged, slurmctld and slurmd for DIR and waits until the node takes jobs.
testbed_start() {
  local dir=${1:?testbed_start DIR} nodes=${2:-1}
  testbed_have_packages || { echo "testbed: SLURM/MUNGE missing: run testbed.sh install" >&2; return 1; }
  [ "$(id -u)" = 0 ] || { echo "testbed: needs root (slurmd and SlurmUser=root)" >&2; return 1; }
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || return 1
  if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
    echo "testbed: a cluster already runs in $dir (testbed.sh stop $dir first)" >&2
    return 1
  fi
  # munged refuses group- or world-writable directories on its paths, and wants its socket's
  # directory searchable by all (clients of any user connect to it); the key itself is 0600.
  mkdir -p "$dir"/{munge,state,spool,run,log} && chmod 755 "$dir"/munge || return 1
  rm -f "$dir/client.netns"
  if [ "$nodes" = 1 ]; then
    _testbed_write_conf "$dir" || _testbed_fail "$dir" "could not write $dir/slurm.conf" || return 1
  else
    _testbed_parse_hosts && [ ${#TESTBED_NAMES[@]} = "$nodes" ] || {
      echo "testbed: $nodes nodes need RSFM_HOSTS=\"name:netns:addr ...\" naming $nodes hosts" \
           "(python tests/netns.py -- ... sets it); got '${RSFM_HOSTS:-}'" >&2; return 1; }
    command -v ip >/dev/null && command -v unshare >/dev/null || {
      echo "testbed: $nodes nodes need iproute2's ip and util-linux's unshare" >&2; return 1; }
    _testbed_write_conf_nodes "$dir" || _testbed_fail "$dir" "could not write $dir/slurm.conf" || return 1
  fi
  export TESTBED_DIR=$dir SLURM_CONF=$dir/slurm.conf

  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key" || return 1
  # --force: munged refuses a socket under a directory other users cannot enter (pytest's 0700
  # temporary directories); forced, it only warns. Only root talks to this cluster.
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
         --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
         --seed-file="$dir/munge/munged.seed" \
    || _testbed_fail "$dir" "munged did not start" || return 1
  # slurmctld and slurmd (and their forks, such as slurmscriptd) carry RSFM_TESTBED in their
  # environment, so testbed_stop can find any that outlive their pid files.
  # -c: start with an empty queue even if DIR holds an earlier cluster's state (its jobs' nodes
  # would otherwise look busy, and a test would find jobs it did not submit).
  if [ "$nodes" = 1 ]; then
    RSFM_TESTBED=$dir slurmctld -c -f "$SLURM_CONF" \
      || _testbed_fail "$dir" "slurmctld did not start" || return 1
    RSFM_TESTBED=$dir slurmd -f "$SLURM_CONF" \
      || _testbed_fail "$dir" "slurmd did not start" || return 1
  else
    RSFM_TESTBED=$dir _testbed_on_host 0 slurmctld -c -f "$SLURM_CONF" \
      || _testbed_fail "$dir" "slurmctld did not start on ${TESTBED_NAMES[0]}" || return 1
    local i
    for i in "${!TESTBED_NAMES[@]}"; do
      RSFM_TESTBED=$dir _testbed_on_host "$i" slurmd -N "${TESTBED_NAMES[$i]}" -f "$SLURM_CONF" \
        || _testbed_fail "$dir" "slurmd did not start on ${TESTBED_NAMES[$i]}" || return 1
    done
  fi

  # Every node idle: sinfo prints one state per node (-N).
  local state=""
  for _ in $(seq 120); do
    state=$(testbed_exec "$dir" sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ')
    [ "$state" = "idle " ] && break
    sleep 0.5
  done
  [ "$state" = "idle " ] || _testbed_fail "$dir" "nodes not idle after 60 s (states '${state}')" || return 1
  echo "testbed: SLURM up in $dir (SLURM_CONF=$SLURM_CONF)" >&2
}

# SIGTERM to the daemons of these pid files, SIGKILL to those alive 10 s later. A pid counts only
# while its command line names DIR (a stale pid file must not kill an unrelated process).
_testbed_kill_pidfiles() {
  local dir=$1 file pid pids=() alive=()
  shift
  for file in "$@"; do
    [ -f "$file" ] && pid=$(cat "$file") && [ -n "$pid" ] || continue
    tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$dir" || continue
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 50); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    sleep 0.2
  done
  kill -KILL "${alive[@]}" 2>/dev/null
  return 0
}

# Cancels the cluster's jobs, stops slurmd, slurmctld and munged, then kills whatever of the
# cluster survived: job steps that ignored SIGTERM, slurmstepd processes (slurmd does not stop
# them when it exits). Safe to call twice, or after a failed start.
testbed_stop() {
  local dir=${1:-${TESTBED_DIR:-}} conf pid
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd)
  conf=$dir/slurm.conf
  if [ -f "$dir/run/slurmctld.pid" ] && SLURM_CONF=$conf testbed_exec "$dir" scontrol ping >/dev/null 2>&1; then
    SLURM_CONF=$conf testbed_exec "$dir" scancel --full --quiet --user="$(id -un)" 2>/dev/null
    for _ in $(seq 40); do
      [ -z "$(SLURM_CONF=$conf testbed_exec "$dir" squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  # munged last: the SLURM daemons authenticate through it while they shut down.
  _testbed_kill_pidfiles "$dir" "$dir"/run/slurmd*.pid "$dir/run/slurmctld.pid"
  _testbed_kill_pidfiles "$dir" "$dir/run/munged.pid"
  # Stragglers: the daemons' forks (slurmscriptd) carry RSFM_TESTBED; slurmstepd and job processes
  # carry this SLURM_CONF (slurmd sets it for them) and, for the latter, a SLURM_JOB_ID. Asking
  # for both spares a shell that merely exported SLURM_CONF to use the cluster.
  local environ killed=()
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [ "$pid" = $$ ] && continue
    environ=$(tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ") || continue
    if grep -qxF "RSFM_TESTBED=$dir" <<<"$environ" || \
       { grep -qxF "SLURM_CONF=$conf" <<<"$environ" && \
         { grep -q '^SLURM_JOB_ID=' <<<"$environ" || \
           [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmstepd ]; }; }; then
      kill -KILL "$pid" 2>/dev/null && killed+=("$pid")
    fi
  done
  # Return once they are dead: gone, or zombies (state Z) waiting for init to reap them.
  for pid in "${killed[@]}"; do
    for _ in $(seq 50); do
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] || [ ! -e "/proc/$pid" ] && break
      sleep 0.1
    done
  done
  rm -f "$dir"/run/*.pid
  [ "${SLURM_CONF:-}" = "$conf" ] && unset SLURM_CONF TESTBED_DIR
  return 0
}

_testbed_main() {
  set -euo pipefail
  local verb=${1:-}
  shift || true
  case "$verb" in
    install) testbed_install ;;
    start)
      local dir=${1:?usage: testbed.sh start DIR [--nodes N]} nodes=1
      shift
      [ "${1:-}" = --nodes ] && nodes=${2:?--nodes N}
      testbed_install
      testbed_start "$dir" "$nodes"
      echo "export SLURM_CONF=$SLURM_CONF" ;;
    exec)
      local dir=${1:?usage: testbed.sh exec DIR -- CMD [ARGS...]}
      shift
      [ "${1:-}" = "--" ] && shift
      SLURM_CONF=$(cd "$dir" && pwd)/slurm.conf testbed_exec "$dir" "$@" ;;
    stop) testbed_stop "${1:?usage: testbed.sh stop DIR}" ;;
    logs) testbed_logs "${1:?usage: testbed.sh logs DIR}" ;;
    run)
      local own_dir=0 rc=0 nodes=1
      if [ "${1:-}" != "--" ] && [ "${1:-}" != "--nodes" ] && [ -n "${1:-}" ]; then TESTBED_RUN_DIR=$1; shift
      else TESTBED_RUN_DIR=$(mktemp -d -t rsfm-slurm.XXXXXX); own_dir=1; fi
      if [ "${1:-}" = "--nodes" ]; then nodes=${2:?--nodes N}; shift 2; fi
      [ "${1:-}" = "--" ] && shift
      [ $# -gt 0 ] || { echo "usage: testbed.sh run [DIR] [--nodes N] -- CMD [ARGS...]" >&2; exit 2; }
      testbed_install
      trap 'testbed_stop "$TESTBED_RUN_DIR"' EXIT
      testbed_start "$TESTBED_RUN_DIR" "$nodes"
      testbed_exec "$TESTBED_RUN_DIR" "$@" || rc=$?
      testbed_stop "$TESTBED_RUN_DIR"
      # A temporary directory of our own goes once CMD succeeded; after a failure its logs stay.
      if [ "$own_dir" = 1 ] && [ "$rc" = 0 ]; then
        rm -rf "$TESTBED_RUN_DIR"
      elif [ "$rc" != 0 ]; then
        echo "testbed: '$*' exited with $rc; cluster logs in $TESTBED_RUN_DIR/log" >&2
      fi
      exit "$rc" ;;
    *)
      echo "usage: testbed.sh install | start DIR [--nodes N] | stop DIR | logs DIR |" \
           "exec DIR -- CMD [ARGS...] | run [DIR] [--nodes N] -- CMD [ARGS...]" >&2
      exit 2 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _testbed_main "$@"
fi
