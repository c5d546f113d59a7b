#!/usr/bin/env bash
# Shared launcher for the training stages: one process per GPU on every node.
#
#   training/launch/run_stage.sh MODULE CONFIG [--resume] [--set section.key=value ...]
#
# Single node: uses every visible GPU. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT on every node (SLURM's SLURM_NNODES / SLURM_NODEID / SLURM_JOB_NODELIST are read
# when present). GPUS_PER_NODE overrides the GPU count. LAUNCHER=torchrun (default),
# accelerate (accelerate launch, same variables) or python (one process, e.g. a CPU smoke test).
set -euo pipefail

MODULE=${1:?usage: run_stage.sh MODULE CONFIG [args...]}
shift
CONFIG=${1:?usage: run_stage.sh MODULE CONFIG [args...]}
shift

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi

if [ -n "${SLURM_NNODES:-}" ]; then
  NNODES=${NNODES:-$SLURM_NNODES}
  NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
  if [ -z "${MASTER_ADDR:-}" ] && command -v scontrol >/dev/null 2>&1; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  fi
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${GPUS_PER_NODE:-0}" -ge 1 ] || GPUS_PER_NODE=1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

echo "[$MODULE] $CONFIG: $NNODES node(s) x $GPUS_PER_NODE process(es), node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT" >&2
case "${LAUNCHER:-torchrun}" in
  python)
    exec "$PYTHON" -m "$MODULE" --config "$CONFIG" "$@" ;;
  accelerate)
    exec "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
      --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
      --num_processes $((NNODES * GPUS_PER_NODE)) -m "$MODULE" --config "$CONFIG" "$@" ;;
  torchrun)
    exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
      --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --nproc_per_node "$GPUS_PER_NODE" \
      -m "$MODULE" --config "$CONFIG" "$@" ;;
  *)
    echo "LAUNCHER must be torchrun, accelerate or python" >&2; exit 2 ;;
esac
