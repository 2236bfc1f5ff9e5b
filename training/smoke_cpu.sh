#!/usr/bin/env bash
# CPU smoke run of the whole training pipeline on tiny-random-llama (under a minute, no download).
# Corpus: the Python standard library's docs on this machine; index and training text are disjoint.
#   bash training/smoke_cpu.sh [WORK_DIR]
# FLASHBACK overrides the command (CI uses "python -m flashback_rag.cli").
set -euo pipefail
WORK=${1:-$(mktemp -d)}
FLASHBACK=${FLASHBACK:-flashback}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # tiny tensors: one thread is fastest
MODEL=tiny-random-llama

# 1. corpus: even-numbered documents are indexed, odd-numbered ones are the text to model
$PYTHON - "$WORK" <<'PY'
import sys, pathlib
from flashback_rag.stdlib_corpus import stdlib_documents
work = pathlib.Path(sys.argv[1])
for i, doc in enumerate(stdlib_documents()[:80]):
    part = work / "corpus" / ("index" if i % 2 == 0 else "text")
    part.mkdir(parents=True, exist_ok=True)
    (part / f"{i:03d}.txt").write_text(doc.text, encoding="utf-8")
PY
# 2. index, 3. examples, 4. LoRA + markers, 5. perplexity, 6. merged export
$FLASHBACK index build --input "$WORK/corpus/index" --out "$WORK/index" --tokenizer words --chunk-tokens 64 --quiet
$FLASHBACK prepare --model $MODEL --input "$WORK/corpus/text" --index "$WORK/index" --out "$WORK/data" \
    --stride 16 --query-tokens 32 --doc-tokens 32 --max-positions 128 --every 25 \
    --validation-fraction 0.2 --max-examples 64 --max-validation-examples 16 --quiet
$FLASHBACK train --model $MODEL --data "$WORK/data" --out "$WORK/adapter" --pattern append --markers \
    --max-steps 16 --batch-size 8 --learning-rate 5e-3 --logging-steps 4 --report-to none --quiet
$FLASHBACK eval ppl --model $MODEL --adapter "$WORK/adapter" --data "$WORK/data" --output "$WORK/ppl.json" --quiet
$FLASHBACK export --model $MODEL --adapter "$WORK/adapter" --merge --out "$WORK/merged"
echo "smoke run done: $WORK"
