#!/bin/bash
# Multi-node launch without SLURM: run this on every node, with NODE_RANK = 0..NNODES-1 and MASTER_ADDR = node 0's
# address (Lightning reads the ranks torchrun sets: TorchElasticEnvironment).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/torchrun.sh      # on node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/torchrun.sh      # on node 1
# Runs from the repository root on a shared filesystem (shards, runs/ and checkpoints seen by every node).
set -euo pipefail
NNODES=${NNODES:-2}
GPUS=${GPUS:-8}
# The README's real stack (Wan2.1 1.3B + Wan VAE + umT5, shards in data/shards/) with UltraGen 1080P and ZeRO-2;
# add --model.net_weights PATH to start from the Wan2.1 weights.
CONFIGS=${CONFIGS:-"-c configs/base.yaml -c configs/model/wan2.1_t2v_1.3b.yaml -c configs/model/wan_vae.yaml -c configs/model/umt5.yaml -c configs/experiments/ultragen_1080p.yaml -c configs/data/shards.yaml -c configs/trainer/deepspeed_zero2.yaml"}
# shellcheck disable=SC2086  # CONFIGS is a list of arguments
torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$GPUS" \
    --master-addr="$MASTER_ADDR" --master-port="${MASTER_PORT:-29500}" \
    -m ultragen fit $CONFIGS \
    --trainer.num_nodes="$NNODES" --trainer.devices="$GPUS" \
    --ckpt_path last
