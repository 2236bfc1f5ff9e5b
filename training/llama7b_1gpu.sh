#!/usr/bin/env bash
# One GPU, a 7B model, the seed's settings (FlashBack run.py / train.sh): max positions 512, stride 16,
# passages of 128 tokens, 16000 training examples, batch 2 x accumulation 8, lr 1e-4, cosine, 10% warm-up,
# 1000 steps, evaluation every 200 steps, checkpoints every 1000, bf16 autocast, LoRA r=16 alpha=32.
#   bash training/llama7b_1gpu.sh CORPUS_DIR INDEX_DIR [MODEL] [WORK_DIR]
# WikiText-103 as in the paper: --input hf:wikitext:wikitext-103-raw-v1:train, the validation split, and
# --forbidden-titles with the seed's wikitext103_forbidden_titles.txt.
set -euo pipefail
CORPUS=$1; INDEX=$2; MODEL=${3:-meta-llama/Llama-2-7b-hf}; WORK=${4:-runs/llama7b}
FLASHBACK=${FLASHBACK:-flashback}
$FLASHBACK prepare --model "$MODEL" --input "$CORPUS" --index "$INDEX" --out "$WORK/data" \
    --stride 16 --query-tokens 32 --doc-tokens 128 --max-positions 512 --construction random \
    --max-examples 16000 --max-validation-examples 2000 ${FORBIDDEN:+--forbidden-titles "$FORBIDDEN"}
$FLASHBACK train --model "$MODEL" --data "$WORK/data" --out "$WORK/append-lora-markers" \
    --pattern append --markers --tune lora --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 \
    --batch-size 2 --grad-accum 8 --eval-batch-size 32 --learning-rate 1e-4 --warmup-ratio 0.1 \
    --max-steps 1000 --eval-steps 200 --save-steps 1000 --logging-steps 5 --precision auto \
    --gradient-checkpointing --resume
$FLASHBACK eval ppl --model "$MODEL" --adapter "$WORK/append-lora-markers" --data "$WORK/data" \
    --batch-size 32 --output "$WORK/ppl.json"
