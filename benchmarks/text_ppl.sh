#!/usr/bin/env bash
# `flashback eval ppl --text` with paired intervals: the shipped model against the base model with no
# retrieval and with prepend, on the validation documents of the recipe (training/smollm2_flashback.sh).
#   bash benchmarks/text_ppl.sh WORK [OUT] [MODEL]   # WORK: the recipe's work folder (its corpus/ and index-related)
# related: the index of other documents (WORK/index-related); copy: an index of every document, validation
# ones included (WORK/index-all, built here). ~1 hour on 2 CPU cores for 16,384 tokens.
set -euo pipefail
WORK=${1:?the recipe work folder (bash training/smollm2_flashback.sh WORK)}
OUT=${2:-benchmarks/results/text_ppl}
MODEL=${3:-smollm2-135m-flashback}
FLASHBACK=${FLASHBACK:-flashback}
PYTHON=${PYTHON:-python}
TOKENS=${TOKENS:-16384}
mkdir -p "$OUT"
$PYTHON - "$WORK" <<'PY'
import json, sys, pathlib
work = pathlib.Path(sys.argv[1]) / "corpus"
read = lambda name: [json.loads(line) for line in open(work / f"{name}.jsonl", encoding="utf-8")]
(work / "validation.txt").write_text("\n\n".join(d["text"] for d in read("validation")), encoding="utf-8")
with open(work / "all.jsonl", "w", encoding="utf-8") as out:
    for name in ("index", "train", "validation"):
        for d in read(name):
            out.write(json.dumps(d) + "\n")
PY
[ -f "$WORK/index-all/manifest.json" ] || $FLASHBACK index build --input "$WORK/corpus/all.jsonl" \
    --out "$WORK/index-all" --chunk-tokens 64 --tokenizer smollm2-135m --quiet
COMMON="--text $WORK/corpus/validation.txt --max-tokens $TOKENS --max-positions 256 --quiet"
PREPEND="--model smollm2-135m --pattern prepend --no-markers --stride 16 --query-tokens 32 --doc-tokens 80"
$FLASHBACK eval ppl --model smollm2-135m --pattern none $COMMON --output "$OUT/base-none.json" > /dev/null
$FLASHBACK eval ppl $PREPEND --index "$WORK/index-related" $COMMON --output "$OUT/base-prepend-related.json" > /dev/null
$FLASHBACK eval ppl $PREPEND --index "$WORK/index-all" $COMMON --output "$OUT/base-prepend-copy.json" > /dev/null
$FLASHBACK eval ppl --model "$MODEL" --index "$WORK/index-related" $COMMON --compare "$OUT/base-none.json" \
    --output "$OUT/flashback-related.json" > /dev/null
$FLASHBACK eval ppl --model "$MODEL" --index "$WORK/index-all" $COMMON --compare "$OUT/base-prepend-copy.json" \
    --output "$OUT/flashback-copy.json" > /dev/null
$PYTHON - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("base-none", "base-prepend-related", "base-prepend-copy", "flashback-related", "flashback-copy"):
    r = json.loads((out / f"{name}.json").read_text())
    versus = r.get("compare")
    extra = f"  ratio {versus['ratio']:.3f} [{versus['ratio_ci'][0]:.3f}, {versus['ratio_ci'][1]:.3f}]" if versus else ""
    print(f"{name:22s} ppl {r['ppl']:.3f} [{r['ppl_ci'][0]:.3f}, {r['ppl_ci'][1]:.3f}] over {r['tokens']} tokens{extra}")
PY
