#!/usr/bin/env bash
# The wheels benchmarks/gpu/run.sh needs on the GPU machine, where nothing can be downloaded.
#
#   bash benchmarks/gpu/wheels.sh                 # -> benchmarks/gpu/wheels/ (git-ignored; name it in `carry`)
#   PYVER=3.11 bash benchmarks/gpu/wheels.sh DIR  # wheels for another Python (to try the offline install here)
#
# The device image (see benchmarks/README.md) has torch, transformers, tokenizers, peft, accelerate, numpy,
# scipy and tqdm; flashback-rag itself runs from the checkout. It lacks the two packages of the embedded
# BM25 retriever: bm25s (pure Python; needs numpy and scipy, both there) and PyStemmer (a compiled
# extension: a manylinux x86-64 wheel for the device's CPython, 3.12 by default). Pinned to the versions
# this project's own environment is tested with. pip downloads only these files (--no-deps); the folder is
# replaced whole, so a stale wheel never travels beside a new one (two versions would stop the install).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:-$here/wheels}
pyver=${PYVER:-3.12}
py=${PYTHON:-python3}
packages=("bm25s==0.3.16" "PyStemmer==3.1.0")

tmp=$(mktemp -d "${dest%/}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$tmp" "${packages[@]}"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
ls -l "$dest"
du -sh "$dest"
