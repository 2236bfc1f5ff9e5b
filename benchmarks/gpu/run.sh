#!/usr/bin/env bash
# FlashBack where the paper measured it, in one command: parity, speed, training, then a summary.
#
#   bash benchmarks/gpu/run.sh RESULTS_DIR                        # on a GPU machine: < 8 minutes on one H100
#   bash benchmarks/gpu/run.sh RESULTS_DIR --tiny --device cpu    # the CPU check (tests/unit/test_gpu_run.py)
#
# Options: --tiny (tiny shapes, seconds), --device DEV (default: CUDA when present), --budget SECONDS
# (default 450; --tiny 300), --python PY (default $PYTHON, else python3).
#
# It installs nothing from the network. The project runs from this checkout (each part is
# `python benchmarks/gpu/PART.py`, nothing installed); the device image has torch, transformers, peft and
# accelerate, and what it lacks (bm25s and PyStemmer, for the training part's BM25 index) travels as
# wheels in benchmarks/gpu/wheels/ (made by benchmarks/gpu/wheels.sh), unpacked with `pip --no-index`
# into a scratch folder only when the Python running this cannot import them.
#
# In order, each writing its JSON file in RESULTS_DIR after every case or point it finishes:
#   parity.json  cached == recomputed on the device (parity.py)
#   speed.json   prepend / append / none on a Llama-2-7B shape in bf16, T = 4096, 2048, 1024; a batch (timing.py)
#   train.json   packed FlashBack training steps of a 1.1B shape in bf16 (train_steps.py)
# then summary.json and summary.md (summary.py); run.log holds the whole output. Six files: the device
# tool brings back at most eight.
#
# Time: every part gets a deadline, an absolute time (what one part leaves unused, the next one gets):
# parity by 15% of the budget, speed by 75%, training by 94%. A part checks it before each case, point
# or step (it prices a speed point with the time model first) and skips what would not fit; `timeout`,
# 20 s past the deadline, is the backstop (SIGTERM: the part records itself as partial). The summary
# always runs and says what is missing.
#
# Exit status: 0 when every part finished and every check held, 1 otherwise (see summary.md), 2 for a
# usage error.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { echo "usage: bash benchmarks/gpu/run.sh RESULTS_DIR [--tiny] [--device DEV] [--budget SECONDS] [--python PY]" >&2; exit 2; }

out="" tiny="" device="" budget="" py="${PYTHON:-python3}"
while (( $# )); do
    case "$1" in
        --tiny) tiny="--tiny"; shift ;;
        --device) [[ $# -ge 2 ]] || usage; device="$2"; shift 2 ;;
        --budget) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage; budget="$2"; shift 2 ;;
        --python) [[ $# -ge 2 ]] || usage; py="$2"; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "run.sh: unknown option $1" >&2; usage ;;
        *) [[ -z "$out" ]] || usage; out="$1"; shift ;;
    esac
done
[[ -n "$out" ]] || usage
budget=${budget:-$([[ -n "$tiny" ]] && echo 300 || echo 450)}
start=$(date +%s)
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
rm -f "$out"/{parity,speed,train,summary}.json "$out"/summary.md "$out"/run.log

part() {   # part NAME SCRIPT PERCENT_OF_BUDGET [extra args]: one part under its deadline; 1 if it did not finish
    local name=$1 script=$2 pct=$3
    shift 3
    local until=$(( start + budget * pct / 100 )) began
    began=$(date +%s)
    if (( until - began < 5 )); then
        echo "== $name: no time left, not started"
        return 1
    fi
    echo "== $name: until +$(( until - start )) s"
    timeout --signal=TERM --kill-after=15 $(( until - began + 20 )) \
        "$py" "$here/$script" --out "$out/$name.json" --deadline "$until" ${device:+--device "$device"} $tiny "$@"
    local rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - began )) s"
    return $(( rc != 0 ))
}

main() {
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
        TOKENIZERS_PARALLELISM=false
    local scratch failed=0
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/flashback-gpu-run.XXXXXX")
    trap 'rm -rf "$scratch"' EXIT

    echo "== flashback-rag device run: $(date -u +%FT%TZ), budget ${budget} s${tiny:+, tiny}${device:+, device $device}"
    echo "== checkout $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$here" status --porcelain 2>/dev/null | grep -q . && echo ' (with changes)')"
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    "$py" -c 'import sys, torch, transformers; print("== python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' \
        || { echo "run.sh: $py cannot import torch and transformers"; return 2; }

    # The wheels, only where the packages are missing (no index: nothing is fetched).
    if ! "$py" -c 'import bm25s, Stemmer' 2>/dev/null; then
        local wheels=${FLASHBACK_WHEELS:-$here/wheels}
        if compgen -G "$wheels/*.whl" >/dev/null; then
            "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" "$wheels"/*.whl \
                && export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
        fi
        if "$py" -c 'import bm25s, Stemmer' 2>/dev/null; then
            echo "== bm25s and PyStemmer from $wheels"
        else
            echo "== bm25s / PyStemmer missing, no wheels in $wheels (run benchmarks/gpu/wheels.sh): training will fail"
        fi
    fi

    part parity parity.py 15 || failed=1
    part speed timing.py 75 || failed=1
    part train train_steps.py 94 --scratch "$scratch/train" || failed=1
    "$py" "$here/summary.py" "$out" >/dev/null || failed=1
    echo "== summary: $out/summary.md ($(( $(date +%s) - start )) s in all)"
    cat "$out/summary.md"
    return $failed
}

main 2>&1 | tee "$out/run.log"
exit "${PIPESTATUS[0]}"
