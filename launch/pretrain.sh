#!/usr/bin/env bash
# MAE pretraining through the deepspeed launcher. Thin: everything is an environment variable.
#
#   CONFIG          run config                 (default configs/pretrain/debug.yaml)
#   DS_CONFIG       DeepSpeed JSON; overrides the run config's train.ds_config
#   NPROC_PER_NODE  processes per node         (default: GPUs on this node, or 2 without GPUs)
#   NNODES          nodes                      (default 1, or every host of HOSTFILE)
#   HOSTFILE        deepspeed hostfile, "hostname slots=N" per line, for several nodes
#   NO_SSH=1        with HOSTFILE: start only this node's processes (run once per node, e.g. from
#                   a scheduler); needs NODE_RANK
#   NODE_RANK       this node's index in HOSTFILE (with NO_SSH=1)
#   MASTER_ADDR     rank-0 host                (default 127.0.0.1)
#   MASTER_PORT     rendezvous port            (default 29500)
#   RESUME          auto | <checkpoint dir> | none   (default: the run config's checkpoint.resume)
# Arguments are run-config overrides, e.g. `train.max_steps=100 optim.base_lr=1e-4`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}" ] || source launch/setup_env.sh

CONFIG=${CONFIG:-configs/pretrain/debug.yaml}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
# GPUs torch can use on this node; 0 without NVIDIA device nodes (importing torch to learn that
# costs seconds at every start).
gpus=0
if compgen -G "/dev/nvidia[0-9]*" >/dev/null; then
  gpus=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
fi
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(( gpus > 0 ? gpus : 2 ))
fi
if [ "$gpus" = 0 ]; then
  # CPU ranks: split the cores between the processes instead of oversubscribing them.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))}
fi

launcher=(deepspeed --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --num_gpus "$NPROC_PER_NODE")
if [ -n "${HOSTFILE:-}" ]; then
  launcher+=(--hostfile "$HOSTFILE")
  [ -n "${NNODES:-}" ] && launcher+=(--num_nodes "$NNODES")
  if [ "${NO_SSH:-0}" = 1 ]; then
    launcher+=(--no_ssh --node_rank "${NODE_RANK:?NO_SSH=1 needs NODE_RANK}")
  fi
elif [ "${NNODES:-1}" != 1 ]; then
  echo "launch/pretrain.sh: NNODES=$NNODES needs HOSTFILE" >&2
  exit 2
fi

overrides=("$@")
[ -n "${DS_CONFIG:-}" ] && overrides=("train.ds_config=$DS_CONFIG" "${overrides[@]}")
resume=()
[ -n "${RESUME:-}" ] && resume=(--resume "$RESUME")

set -x
exec "${launcher[@]}" --module rsfm_ds.cli pretrain --config "$CONFIG" "${resume[@]}" "${overrides[@]}"
