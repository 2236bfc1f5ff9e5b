#!/usr/bin/env bash
# SmolLM2-135M on CPU: append + LoRA + markers on the Python docs (the settings of benchmarks/quality.py).
# About 2 s per training sequence of 192 tokens on one busy core; 100 steps x batch 2 ~ 7 min.
#   bash training/smollm2_cpu.sh CORPUS_DIR INDEX_DIR [WORK_DIR]
#   (INDEX_DIR: `flashback index build --input OTHER_DOCS --out INDEX_DIR`, disjoint from CORPUS_DIR)
set -euo pipefail
CORPUS=$1; INDEX=$2; WORK=${3:-runs/smollm2}
FLASHBACK=${FLASHBACK:-flashback}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL=smollm2-135m
$FLASHBACK prepare --model $MODEL --input "$CORPUS" --index "$INDEX" --out "$WORK/data" \
    --stride 16 --query-tokens 32 --doc-tokens 64 --max-positions 192 --every 7 \
    --validation-fraction 0.1 --max-examples 1024 --max-validation-examples 64
$FLASHBACK train --model $MODEL --data "$WORK/data" --out "$WORK/append-lora-markers" \
    --pattern append --markers --tune lora --max-steps 100 --batch-size 2 --learning-rate 5e-4 \
    --warmup-ratio 0.1 --eval-steps 50 --logging-steps 10
$FLASHBACK eval ppl --model $MODEL --adapter "$WORK/append-lora-markers" --data "$WORK/data" \
    --output "$WORK/ppl-append-lora-markers.json"
$FLASHBACK eval ppl --model $MODEL --data "$WORK/data" --pattern none --output "$WORK/ppl-none.json"
