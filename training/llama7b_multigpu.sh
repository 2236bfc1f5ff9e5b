#!/usr/bin/env bash
# Several GPUs: the same command as llama7b_1gpu.sh under `accelerate launch` with DeepSpeed ZeRO-2
# (training/ds_zero2.json: ZeRO stage 2; the Trainer keeps its own AdamW and cosine schedule). The Hugging
# Face Trainer does the distribution; nothing else changes. Global batch = 2 x GRAD_ACC x NUM_GPUS; the
# default GRAD_ACC = 8 / NUM_GPUS keeps the seed's global batch of 16.
#   NUM_GPUS=4 bash training/llama7b_multigpu.sh DATA_DIR [MODEL] [WORK_DIR]
# DATA_DIR: prepared with the `flashback prepare` line of llama7b_1gpu.sh.
set -euo pipefail
DATA=$1; MODEL=${2:-meta-llama/Llama-2-7b-hf}; WORK=${3:-runs/llama7b-multi}
NUM_GPUS=${NUM_GPUS:-2}; GRAD_ACC=${GRAD_ACC:-$((8 / NUM_GPUS > 0 ? 8 / NUM_GPUS : 1))}
HERE=$(cd "$(dirname "$0")" && pwd)
accelerate launch --num_processes "$NUM_GPUS" --mixed_precision bf16 \
    -m flashback_rag.cli train --model "$MODEL" --data "$DATA" --out "$WORK/append-lora-markers" \
    --pattern append --markers --tune lora --batch-size 2 --grad-accum "$GRAD_ACC" --eval-batch-size 32 \
    --learning-rate 1e-4 --warmup-ratio 0.1 --max-steps 1000 --eval-steps 200 --save-steps 1000 \
    --logging-steps 5 --precision bf16 --deepspeed "$HERE/ds_zero2.json" --gradient-checkpointing --resume
