#!/usr/bin/env bash
# DPO / MPO on preference pairs on a GPU cluster, run as is on every node:
#
#   bash training/launch/dpo.sh CONFIG [--resume] [--set section.key=value ...]
#
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (or SLURM's variables); GPUS_PER_NODE;
# LAUNCHER=torchrun|accelerate|python. DeepSpeed ZeRO comes from the config's train.deepspeed.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_stage.sh" training.dpo "$@"
