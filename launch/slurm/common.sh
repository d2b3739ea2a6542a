#!/usr/bin/env bash
# Sourced by every rsfm-ds sbatch script: one way of turning SLURM's variables into the deepspeed
# launcher's. Each node runs one launcher (srun --ntasks-per-node=1), which starts
# GPUS_PER_NODE ranks on that node, so ranks are node_rank * GPUS_PER_NODE + local rank.
#
# Reads:  SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_NNODES, GPUS_PER_NODE (or SLURM_GPUS_ON_NODE)
# Sets:   MASTER_ADDR (first host of the allocation), MASTER_PORT (derived from the job id, so
#         concurrent jobs on shared nodes do not collide), NNODES, GPUS_PER_NODE, and writes
#         HOSTFILE ("host slots=GPUS_PER_NODE" per node) for the launcher's world layout.
set -euo pipefail

rsfm_slurm_setup() {
  : "${SLURM_JOB_ID:?not inside a SLURM job (SLURM_JOB_ID unset)}"
  GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
  NNODES=${SLURM_NNODES:-1}
  mapfile -t RSFM_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  MASTER_ADDR=${MASTER_ADDR:-${RSFM_HOSTS[0]}}
  MASTER_PORT=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
  HOSTFILE=${HOSTFILE:-${RSFM_JOB_DIR:-$PWD}/hostfile.$SLURM_JOB_ID}
  : > "$HOSTFILE"
  for host in "${RSFM_HOSTS[@]}"; do echo "$host slots=$GPUS_PER_NODE" >> "$HOSTFILE"; done
  export MASTER_ADDR MASTER_PORT NNODES GPUS_PER_NODE HOSTFILE
}

# The command each node's task runs: deepspeed without ssh, this node's rank from SLURM_NODEID.
# Usage: srun ... bash -c "$(rsfm_node_launcher) <module args>" (or rsfm_srun_per_node, below)
rsfm_node_launcher() {
  echo "deepspeed --hostfile $HOSTFILE --no_ssh --node_rank \$SLURM_NODEID" \
       "--num_nodes $NNODES --num_gpus $GPUS_PER_NODE" \
       "--master_addr $MASTER_ADDR --master_port $MASTER_PORT --module rsfm_ds.cli"
}

# Runs `<launcher> ARGS...` once on every node of the allocation and returns its status.
# --kill-on-bad-exit: when one node's launcher fails, SLURM stops the others instead of leaving
# them blocked in a collective until the time limit.
rsfm_srun_per_node() {
  local cmd
  cmd="$(rsfm_node_launcher)$(printf ' %q' "$@")"
  echo "[rsfm] $NNODES nodes x $GPUS_PER_NODE GPUs, master $MASTER_ADDR:$MASTER_PORT"
  echo "[rsfm] per node: $cmd"
  ${RSFM_SRUN:-srun} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$cmd"
}

# Cluster networking for NCCL; each line says why. Override any of them before sourcing.
rsfm_nccl_env() {
  # Surface NCCL's transport choices and errors in the job log (WARN keeps it short).
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # Fail a collective that hangs (a dead rank) instead of waiting forever, so SLURM can requeue.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  # Inter-node traffic on the high-speed interface (ib*, or your cluster's name for it), not the
  # management Ethernet; excluding lo and docker keeps NCCL from picking a dead-end interface.
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0}
  # InfiniBand: enabled unless the cluster has none (set NCCL_IB_DISABLE=1 then).
  export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
  # GPUDirect RDMA between NIC and GPU when they share a PCIe switch (the common topology).
  export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
  # Threads for data loading per rank: CPU cores of the task divided by the ranks on the node.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE : 1 ))}
}
