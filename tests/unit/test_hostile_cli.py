"""Hostile input, table-driven: every row is a command line a user (or a damaged file) gets wrong.

Each must end with exactly one line ``flashback: error: ...`` naming what is wrong, exit code 2, no
traceback, and (where a row says so) nothing written. Rows build their bad files in a fresh tmp folder;
none needs more than the tiny random model, so the whole table runs in seconds.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flashback_rag.cli import main
from flashback_rag.indexing import build_index

LATIN1 = "café au lait\n".encode("latin-1")            # \xe9: not UTF-8
CORPUS = "# Cats\nCats purr when content.\n\nDogs bark at night and guard houses.\n"


# ----------------------------------------------------------------------------- builders
def index(tmp: Path) -> Path:
    src = tmp / "docs.md"
    src.write_text(CORPUS)
    build_index(src, tmp / "idx", tokenizer="words", chunk_tokens=5)
    return tmp / "idx"


def edit_manifest(tmp: Path, **changes) -> Path:
    idx = index(tmp)
    manifest = json.loads((idx / "manifest.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            manifest[outer][inner] = value
        else:
            manifest[key] = value
    (idx / "manifest.json").write_text(json.dumps(manifest))
    return idx


def dense_index(tmp: Path, **options) -> Path:
    """A dense index folder written directly with faiss (no embedder needed to reach the checks)."""
    import faiss
    import numpy as np

    idx = tmp / "dense"
    (idx / "dense").mkdir(parents=True)
    flat = faiss.IndexFlatIP(4)
    flat.add(np.eye(4, dtype="float32")[:2])
    faiss.write_index(flat, str(idx / "dense" / "index.faiss"))
    (idx / "chunks.jsonl").write_text("".join(json.dumps({"id": str(i), "title": "", "contents": f"text {i}"}) + "\n"
                                              for i in range(2)))
    dense = {"embedder": "all-MiniLM-L6-v2", "dim": 4, "index_type": "flat", "metric": "inner_product",
             "normalized": True, "nlist": None, "hnsw_m": None, **options}
    (idx / "manifest.json").write_text(json.dumps({"format": "flashback-index", "version": 1, "backend": "dense",
                                                   "num_chunks": 2, "dense": dense}))
    return idx


def prepared(tmp: Path, lines: list[str] | None = None, args: dict | None = None) -> Path:
    data = tmp / "data"
    (data / "train").mkdir(parents=True)
    record = {"format": "flashback-prepared", "version": 1,
              "config": {"stride": 4, "query_tokens": 8, "doc_tokens": 8, "top_k": 1,
                         "passage_template": "{title}\n{text}"},
              "tokenizer": {"fingerprint": "x", "vocab_size": 257, "name": "tiny"}}
    (data / "args.json").write_text(json.dumps(args if args is not None else record))
    good = json.dumps({"passages": [[70, 71]], "src": [65, 66, 67], "tgt": [68, 69, 70, 71]})
    (data / "train" / "00000.jsonl").write_text("\n".join(lines if lines is not None else [good]) + "\n")
    return data


def adapter(tmp: Path, weights: bytes | None = b"ok", pickle: bool = False, **meta_changes) -> Path:
    """An adapter folder as `flashback train` writes it, with one thing changed."""
    folder = tmp / "adapter"
    folder.mkdir()
    meta = {"format": "flashback-adapter", "version": 1, "tune": "lora",
            "markers": {"left": 257, "right": 258, "left_token": "<MARK_L>", "right_token": "<MARK_R>"},
            "config": {"pattern": "append", "markers": True}, "base": {}, "training": {}}
    meta.update(meta_changes)
    meta = {k: v for k, v in meta.items() if v != "DROP"}
    (folder / "flashback.json").write_text(json.dumps(meta))
    (folder / "adapter_config.json").write_text("{}")
    if weights is not None:
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        body = struct.pack("<Q", len(header)) + header + b"\0" * 16
        (folder / "adapter_model.safetensors").write_bytes(body[:len(body) - 8] if weights == b"cut" else body)
    if pickle:
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    return folder


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


GEN = ["generate", "--model", "tiny-random-llama"]
TRAIN = ["train", "--model", "tiny-random-llama"]
PPL = ["eval", "ppl", "--model", "tiny-random-llama"]

# (name, setup(tmp) -> argv, message fragment, paths (relative to tmp) that must not exist afterwards)
Row = tuple[str, Callable[[Path], list[str]], str, tuple[str, ...]]
ROWS: list[Row] = [
    # --- files that are not UTF-8
    ("jsonl corpus not utf-8", lambda t: ["index", "build", "--input", str(write(t, "c.jsonl", b'{"text": "' + LATIN1.strip() + b'"}\n')),
                                          "--out", str(t / "o"), "--tokenizer", "words"], "c.jsonl is not UTF-8 text", ("o",)),
    ("chunks.jsonl not utf-8", lambda t: (write(t, "idx/chunks.jsonl", LATIN1) if index(t) else 0) and
     ["index", "search", str(t / "idx"), "cats"], "chunks.jsonl is not UTF-8 text", ()),
    ("manifest not utf-8", lambda t: (write(t, "idx/manifest.json", LATIN1) if index(t) else 0) and
     ["index", "search", str(t / "idx"), "cats"], "manifest.json is not UTF-8 text", ()),
    ("forbidden titles not utf-8", lambda t: ["index", "search", str(index(t)), "cats", "--forbidden-titles",
                                              str(write(t, "titles.txt", LATIN1))], "--forbidden-titles", ()),
    ("eval --text not utf-8", lambda t: PPL + ["--pattern", "none", "--text", str(write(t, "t.txt", LATIN1))],
     "t.txt is not UTF-8 text", ()),
    ("adapter flashback.json not utf-8", lambda t: (write(adapter(t), "flashback.json", LATIN1) if True else 0) and
     GEN + ["--adapter", str(t / "adapter"), "--pattern", "none", "hi"], "flashback.json is not UTF-8 text", ()),
    ("training shard not utf-8", lambda t: TRAIN + ["--data", str(_latin1_shard(t)), "--out", str(t / "a")],
     "00000.jsonl is not UTF-8 text", ("a",)),
    ("prepared args.json not utf-8", lambda t: (write(prepared(t), "args.json", LATIN1) if True else 0) and
     TRAIN + ["--data", str(t / "data"), "--out", str(t / "a")], "args.json is not UTF-8 text", ("a",)),
    ("stdin prompt not utf-8", lambda t: _stdin(LATIN1) or GEN + ["--pattern", "none", "-"],
     "the prompt on stdin is not UTF-8 text", ()),
    ("retrieve --input not utf-8 jsonl", lambda t: ["retrieve", "--index", str(index(t)), "--input",
                                                    str(write(t, "r.jsonl", b'{"text": "\xff"}\n')), "--out",
                                                    str(t / "rec.jsonl"), "--tokenizer", "words"],
     "r.jsonl is not UTF-8 text", ("rec.jsonl",)),
    # --- index manifests with a wrong type or value
    ("backend is a list", lambda t: ["index", "search", str(edit_manifest(t, backend=["bm25"])), "q"],
     "'backend' must be str", ()),
    ("version is a string", lambda t: ["index", "search", str(edit_manifest(t, version="2")), "q"],
     "'version' must be int", ()),
    ("num_chunks is a string", lambda t: ["index", "search", str(edit_manifest(t, num_chunks="many")), "q"],
     "'num_chunks' must be int", ()),
    ("num_chunks is true", lambda t: ["index", "search", str(edit_manifest(t, num_chunks=True)), "q"],
     "'num_chunks' must be int", ()),
    ("unknown stemmer", lambda t: ["index", "search", str(edit_manifest(t, **{"bm25.stemmer": "klingon"})), "q"],
     "unknown stemmer language 'klingon'", ()),
    ("stemmer is a number", lambda t: ["index", "search", str(edit_manifest(t, **{"bm25.stemmer": 7})), "q"],
     "'stemmer' must be str", ()),
    ("bm25 settings not an object", lambda t: ["index", "search", str(edit_manifest(t, bm25="fast")), "q"],
     "'bm25' must be an object", ()),
    ("unknown backend", lambda t: ["index", "search", str(edit_manifest(t, backend="quantum")), "q"],
     "unknown retrieval back-end 'quantum'", ()),
    ("chunks.jsonl shorter than the manifest", lambda t: _drop_last_chunk(t) and
     ["index", "search", str(t / "idx"), "cats"], "manifest says", ()),
    ("chunk contents not a string", lambda t: (write(t, "idx/chunks.jsonl", '{"id": "0", "contents": 5}\n')
                                               if index(t) else 0) and ["index", "search", str(t / "idx"), "q"],
     "contents and title must be strings", ()),
    ("dense manifest says ivf on a flat index", lambda t: ["index", "search", str(dense_index(t, index_type="ivf")), "q"],
     "the faiss file holds a 'flat' one", ()),
    ("dense index type unknown", lambda t: ["index", "search", str(dense_index(t, index_type="magic")), "q"],
     "'index_type' must be one of", ()),
    ("dense dim is a string", lambda t: ["index", "search", str(dense_index(t, dim="4")), "q"], "'dim' must be int", ()),
    ("dense embedder outside the index", lambda t: ["index", "search", str(dense_index(t, embedder="../../evil")), "q"],
     "neither a folder inside the index", ()),
    ("dense embedder is a hub name", lambda t: ["index", "search", str(dense_index(t, embedder="someone/model")), "q"],
     "pass it yourself", ()),
    ("--embedder on a bm25 index", lambda t: ["index", "search", str(index(t)), "q", "--embedder", "x"],
     "--embedder applies to dense indexes", ()),
    # --- option values
    ("--device foo:bar", lambda t: GEN + ["--pattern", "none", "--device", "foo:bar", "hi"], "unknown device 'foo:bar'", ()),
    ("--dtype float99", lambda t: GEN + ["--pattern", "none", "--dtype", "float99", "hi"], "unknown dtype", ()),
    ("--device with --device-map", lambda t: GEN + ["--pattern", "none", "--device", "cpu", "--device-map", "auto",
                                                    "hi"], "give device or device_map, not both", ()),
    ("--temperature nan", lambda t: GEN + ["--pattern", "none", "--temperature", "nan", "hi"], "--temperature must be", ()),
    ("--temperature inf", lambda t: GEN + ["--pattern", "none", "--temperature", "inf", "hi"], "--temperature must be", ()),
    ("--top-p 0", lambda t: GEN + ["--pattern", "none", "--top-p", "0", "hi"], "--top-p must be a number in (0, 1]", ()),
    ("--max-new-tokens -1", lambda t: GEN + ["--pattern", "none", "--max-new-tokens", "-1", "hi"], "--max-new-tokens", ()),
    ("--retrieval-timeout 0", lambda t: GEN + ["--index", str(index(t)), "--retrieval-timeout", "0", "hi"],
     "--retrieval-timeout must be", ()),
    ("--max-context 0", lambda t: GEN + ["--pattern", "none", "--max-context", "0", "hi"], "--max-context", ()),
    ("search -k 0", lambda t: ["index", "search", str(index(t)), "q", "-k", "0"], "-k must be a positive integer", ()),
    ("build --chunk-tokens 0", lambda t: ["index", "build", "--input", str(write(t, "d.md", CORPUS)), "--out", str(t / "o"),
                                          "--tokenizer", "words", "--chunk-tokens", "0"], "--chunk-tokens", ("o",)),
    ("retrieve --stride 0", lambda t: ["retrieve", "--index", str(index(t)), "--input", "cats purr a lot", "--out",
                                       str(t / "r.jsonl"), "--stride", "0", "--tokenizer", "words"], "--stride", ("r.jsonl",)),
    ("prepare --validation-fraction 1.5", lambda t: ["prepare", "--model", "tiny-random-llama", "--input",
                                                     str(write(t, "d.md", CORPUS)), "--index", str(index(t)), "--out",
                                                     str(t / "p"), "--validation-fraction", "1.5"],
     "--validation-fraction", ("p",)),
    # --- training inputs and settings
    ("--learning-rate -1", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--learning-rate", "-1"],
     "--learning-rate must be a finite number > 0", ("a",)),
    ("--epochs 0", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--epochs", "0"], "--epochs", ("a",)),
    ("--warmup-ratio 2", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--warmup-ratio", "2"],
     "--warmup-ratio", ("a",)),
    ("--lora-dropout 1", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--lora-dropout", "1"],
     "--lora-dropout", ("a",)),
    ("unknown --lora-targets", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--lora-targets",
                                                  "q_prj"], "--lora-targets q_prj: no such module", ("a",)),
    ("corrupt training data", lambda t: TRAIN + ["--data", str(prepared(t, ['{"src": [1'])), "--out", str(t / "a")],
     "line 1 is not valid JSON", ("a",)),
    ("empty training data", lambda t: TRAIN + ["--data", str(prepared(t, [""])), "--out", str(t / "a")],
     "holds no examples", ("a",)),
    ("example missing tgt", lambda t: TRAIN + ["--data", str(prepared(t, ['{"passages": [], "src": [1]}'])), "--out",
                                               str(t / "a")], "missing key(s) tgt", ("a",)),
    ("token id past the vocabulary", lambda t: TRAIN + ["--data", str(prepared(t, ['{"passages": [], "src": [1], "tgt": [99999]}'])),
                                                        "--out", str(t / "a")], "past the vocabulary", ("a",)),
    ("token ids not integers", lambda t: TRAIN + ["--data", str(prepared(t, ['{"passages": [], "src": ["a"], "tgt": [1]}'])),
                                                  "--out", str(t / "a")], "'src' must be a list of token ids", ("a",)),
    ("data folder without args.json", lambda t: TRAIN + ["--data", str(write(t, "d/notes.txt", "x").parent), "--out", str(t / "a")], "no args.json", ("a",)),
    ("args.json not a prepare record", lambda t: TRAIN + ["--data", str(prepared(t, args={"hello": 1})), "--out",
                                                          str(t / "a")], "not a `flashback prepare` record", ("a",)),
    ("eval ppl --batch-size 0", lambda t: PPL + ["--data", str(prepared(t)), "--split", "train", "--batch-size", "0"],
     "--batch-size must be a positive integer", ()),
    ("eval ppl --output under a file", lambda t: PPL + ["--data", str(prepared(t)), "--split", "train", "--output",
                                                        str(write(t, "f", "x") / "out.json")], "is a file, not a folder", ()),
    ("eval ppl --output is a folder", lambda t: PPL + ["--data", str(prepared(t)), "--split", "train", "--output",
                                                       str(t)], "is a folder; give the path of a file", ()),
    ("eval ppl missing split", lambda t: PPL + ["--data", str(prepared(t))], "no 'validation' examples", ()),
    # --- adapter folders
    ("adapter weights truncated", lambda t: GEN + ["--adapter", str(adapter(t, weights=b"cut")), "--pattern", "none", "hi"],
     "is truncated", ()),
    ("adapter weights missing", lambda t: GEN + ["--adapter", str(adapter(t, weights=None)), "--pattern", "none", "hi"],
     "the weights are missing", ()),
    ("adapter pickle weights", lambda t: GEN + ["--adapter", str(adapter(t, weights=None, pickle=True)), "--pattern",
                                                "none", "hi"], "pickle weights", ()),
    ("adapter marker metadata gone", lambda t: GEN + ["--adapter", str(adapter(t, markers="DROP")), "--pattern", "none", "hi"],
     "records no marker ids", ()),
    ("adapter marker ids not integers", lambda t: GEN + ["--adapter", str(adapter(t, markers={"left": "a"})), "hi"],
     "'markers' must hold integer ids", ()),
    ("adapter tune unknown", lambda t: GEN + ["--adapter", str(adapter(t, tune="banana")), "hi"], "'tune' must be one of", ()),
    ("adapter config invalid", lambda t: GEN + ["--adapter", str(adapter(t, config={"stride": 0})), "hi"],
     "not a valid FlashBackConfig", ()),
    ("adapter flashback.json corrupt", lambda t: (write(adapter(t), "flashback.json", "{") if True else 0) and
     GEN + ["--adapter", str(t / "adapter"), "hi"], "flashback.json is corrupt", ()),
    ("adapter folder missing", lambda t: GEN + ["--adapter", str(t / "nope"), "--pattern", "none", "hi"],
     "no adapter folder", ()),
    ("eval ppl with a damaged adapter", lambda t: PPL + ["--adapter", str(adapter(t, weights=None)), "--data",
                                                         str(prepared(t)), "--split", "train"], "weights are missing", ()),
    # --- more families: wrong kinds of paths, empty inputs, out-of-range numbers
    ("--forbidden-titles is a folder", lambda t: ["index", "search", str(index(t)), "q", "--forbidden-titles", str(t)],
     "is a folder; give a text file", ()),
    ("eval --text missing", lambda t: PPL + ["--pattern", "none", "--text", str(t / "nope.txt")], "no such file", ()),
    ("empty prompt, no BOS", lambda t: GEN + ["--pattern", "none", ""], "the prompt is empty", ()),
    ("search an index path that is a file", lambda t: ["index", "search", str(write(t, "f.txt", "x")), "q"],
     "no index folder", ()),
    ("chunking settings not an object", lambda t: ["index", "search", str(edit_manifest(t, chunking=[128])), "q"],
     "'chunking' must be an object", ()),
    ("corpus line not JSON", lambda t: ["index", "build", "--input", str(write(t, "c.jsonl", "{nope\n")), "--out",
                                        str(t / "o"), "--tokenizer", "words"], "line 1 is not valid JSON", ("o",)),
    ("corpus line without text", lambda t: ["index", "build", "--input", str(write(t, "c.jsonl", '{"title": "x"}\n')),
                                            "--out", str(t / "o"), "--tokenizer", "words"], "no 'text'", ("o",)),
    ("dense option on a bm25 build", lambda t: ["index", "build", "--input", str(write(t, "d.md", CORPUS)), "--out",
                                                str(t / "o"), "--tokenizer", "words", "--embedder", "x"],
     "has no option embedder", ("o",)),
    ("build --nlist 0", lambda t: ["index", "build", "--input", str(write(t, "d.md", CORPUS)), "--out", str(t / "o"),
                                   "--backend", "dense", "--nlist", "0"], "--nlist must be a positive integer", ("o",)),
    ("--seed past 64 bits", lambda t: GEN + ["--pattern", "none", "--seed", str(2 ** 70), "hi"], "--seed must be", ()),
    ("--top-k 0", lambda t: GEN + ["--index", str(index(t)), "--top-k", "0", "hi"], "--top-k must be", ()),
    ("train --max-steps 0", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--max-steps", "0"],
     "--max-steps must be a positive integer (or -1", ("a",)),
    ("demo --pages 0", lambda t: ["demo", "--pages", "0"], "--pages must be a positive integer", ()),
    ("demo --pages past the list", lambda t: ["demo", "--model", "tiny-random-llama", "--pages", "99"],
     "pages must be at most 3", ()),
    ("demo --new-tokens 0", lambda t: ["demo", "--new-tokens", "0"], "--new-tokens must be a positive integer", ()),
    ("--retrieve sometimes", lambda t: GEN + ["--retrieve", "sometimes", "hi"], "invalid choice: 'sometimes'", ()),
    ("train --prefix-loss-weight -1", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"),
                                                         "--prefix-loss-weight", "-1"],
     "--prefix-loss-weight must be a finite number >= 0", ("a",)),
    ("train --prefix-loss-weight on prepend", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"),
                                                                "--pattern", "prepend", "--prefix-loss-weight", "1"],
     "prefix_loss_weight needs packed training", ("a",)),
    ("train --grad-accum 0", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--grad-accum", "0"],
     "--grad-accum", ("a",)),
    ("bad validation split", lambda t: TRAIN + ["--data", str(_bad_validation(t)), "--out", str(t / "a")],
     "validation/00000.jsonl line 1", ("a",)),
    ("full-tuned folder given as --adapter", lambda t: GEN + ["--adapter", str(adapter(t, tune="full")), "--pattern",
                                                              "none", "hi"], "load it directly", ()),
    ("prompt argument not utf-8", lambda t: GEN + ["--pattern", "none", "caf\udce9"], "the prompt is not UTF-8 text", ()),
    ("search query not utf-8", lambda t: ["index", "search", str(index(t)), "caf\udce9"], "the query is not UTF-8", ()),
    ("--stop not utf-8", lambda t: GEN + ["--pattern", "none", "--stop", "\udcff", "hi"], "--stop is not UTF-8", ()),
    ("--repetition-penalty 0", lambda t: GEN + ["--pattern", "none", "--repetition-penalty", "0", "hi"],
     "--repetition-penalty must be a finite number > 0", ()),
    ("--no-repeat-ngram-size -1", lambda t: GEN + ["--pattern", "none", "--no-repeat-ngram-size", "-1", "hi"],
     "--no-repeat-ngram-size", ()),
    ("block before on absolute positions", lambda t: ["generate", "--model", "tiny-random-gpt2", "--index",
                                                     str(index(t)), "--block-positions", "before", "hi"],
     "learned absolute positions", ()),
    ("train block before on absolute positions", lambda t: ["train", "--model", "tiny-random-opt", "--data",
                                                           str(prepared(t)), "--out", str(t / "a"),
                                                           "--block-positions", "before"],
     "learned absolute positions", ("a",)),
    ("eval block before on absolute positions", lambda t: ["eval", "ppl", "--model", "tiny-random-gpt2", "--text",
                                                          str(write(t, "t.txt", CORPUS)), "--index", str(index(t)),
                                                          "--block-positions", "before"],
     "learned absolute positions", ()),
    ("eval ppl --compare missing", lambda t: PPL + ["--pattern", "none", "--text", str(write(t, "t.txt", CORPUS)),
                                                    "--compare", str(t / "nope.json")], "no such result file", ()),
    ("eval ppl --compare not JSON", lambda t: PPL + ["--pattern", "none", "--text", str(write(t, "t.txt", CORPUS)),
                                                     "--compare", str(write(t, "r.json", "{"))],
     "is not a JSON result of `flashback eval ppl`", ()),
    ("eval ppl --compare without per-chunk losses", lambda t: PPL + [
        "--pattern", "none", "--text", str(write(t, "t.txt", CORPUS * 4)), "--stride", "4",
        "--compare", str(write(t, "r.json", '{"ppl": 3.0}'))], "has no per-chunk losses", ()),
    ("eval ppl --compare a different text", lambda t: PPL + [
        "--pattern", "none", "--text", str(write(t, "t.txt", CORPUS * 4)), "--stride", "4", "--compare",
        str(write(t, "r.json", '{"ppl": 3.0, "text_tokens": 7, "stride": 4, "tokens": 3, "chunk_nll": [1.0]}'))],
     "did not score the same tokens", ()),
    ("eval ppl --index missing", lambda t: PPL + ["--text", str(write(t, "t.txt", CORPUS)), "--index", str(t / "nope")],
     "no index folder", ()),
    ("train --deepspeed not JSON", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"), "--deepspeed",
                                                      str(write(t, "ds.json", "{zero: 2"))], "is not valid JSON", ("a",)),
    ("packed window with a point outside it", lambda t: TRAIN + ["--data", str(_bad_window(t)), "--out", str(t / "a")],
     "windows/00000.jsonl line 1: a point lies outside", ("a",)),
    # --- outputs that would lose or half-write something
    ("retrieve --out is a folder", lambda t: ["retrieve", "--index", str(index(t)), "--input", "cats purr a lot",
                                              "--out", str(t), "--tokenizer", "words"], "is a folder", ()),
    ("build --out is an existing file", lambda t: ["index", "build", "--input", str(write(t, "d.md", CORPUS)), "--out",
                                                   str(write(t, "keep.txt", "precious")), "--tokenizer", "words"],
     "is an existing file; refusing to replace it", ()),
    ("build --out is a folder of other files", lambda t: ["index", "build", "--input", str(write(t, "d.md", CORPUS)),
                                                          "--out", str(write(t, "mine/notes.txt", "x").parent),
                                                          "--tokenizer", "words"], "refusing to replace it", ()),
    ("build --out is the --input folder", lambda t: ["index", "build", "--input", str(write(t, "in/d.md", CORPUS).parent),
                                                     "--out", str(t / "in"), "--tokenizer", "words"],
     "is the --input folder itself", ()),
    ("train --out is a folder of other files", lambda t: TRAIN + ["--data", str(prepared(t)), "--out",
                                                                  str(write(t, "mine/notes.txt", "x").parent)],
     "refusing to replace it", ()),
    ("export --out is an existing file", lambda t: ["export", "--model", "tiny-random-llama", "--adapter", str(adapter(t)),
                                                    "--merge", "--out", str(write(t, "m.bin", "x"))], "existing file", ()),
    ("prepare --out is an existing file", lambda t: ["prepare", "--model", "tiny-random-llama", "--input",
                                                     str(write(t, "d.md", CORPUS)), "--index", str(index(t)), "--out",
                                                     str(write(t, "p.txt", "x"))], "existing file", ()),
]


def _latin1_shard(tmp: Path) -> Path:
    data = prepared(tmp)
    (data / "train" / "00000.jsonl").write_bytes(b'{"passages": [], "src": [1], "tgt": [2], "note": "\xe9"}\n')
    return data


def _bad_validation(tmp: Path) -> Path:
    data = prepared(tmp)
    (data / "validation").mkdir()
    (data / "validation" / "00000.jsonl").write_text('{"passages": [], "src": [1]}\n')
    return data


def _bad_window(tmp: Path) -> Path:
    data = prepared(tmp)
    (data / "train" / "windows").mkdir()
    (data / "train" / "windows" / "00000.jsonl").write_text(
        json.dumps({"start": 0, "tokens": [65, 66], "points": [5], "passages": [[[70]]], "stride": 2}) + "\n")
    return data


def _drop_last_chunk(tmp: Path) -> bool:
    idx = index(tmp)
    lines = (idx / "chunks.jsonl").read_text().splitlines(keepends=True)
    (idx / "chunks.jsonl").write_text("".join(lines[:-1]))
    return True


_STDIN: list[bytes] = []


def _stdin(data: bytes) -> None:
    _STDIN.append(data)


@pytest.mark.parametrize("name, setup, message, absent", ROWS, ids=[row[0] for row in ROWS])
def test_hostile_input_gives_one_line_and_exit_2(name, setup, message, absent, tmp_path, capsys, monkeypatch):
    _STDIN.clear()
    argv = setup(tmp_path)
    if argv[:2] == ["index", "build"] or argv[:1] in (["retrieve"], ["prepare"], ["train"], ["eval"]):
        argv = [*argv, "--quiet"]        # progress bars are not error lines
    if _STDIN:   # a real byte stream on stdin, as a shell pipe gives it
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_STDIN[0]), encoding="utf-8"))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:       # argparse's own refusals use the same format
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("flashback: error:"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    for path in absent:
        assert not (tmp_path / path).exists(), f"{path} was written"
