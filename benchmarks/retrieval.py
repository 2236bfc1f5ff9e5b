"""Retrieval back-ends on one corpus: index build time, queries per second, recall@1 (a sanity check).

    python benchmarks/retrieval.py                                   # stdlib docs, all back-ends
    python benchmarks/retrieval.py --corpus python-doc --max-chunks 5000 --backends bm25 lucene

Corpora: ``stdlib`` (the Python standard library's pydoc topics and module docstrings, on every
machine with Python) or ``python-doc`` (Debian's python3.11-doc package: fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache; its reST sources are read).
The corpus is chunked once (smollm2-135m tokens, 128 a chunk, as ``flashback index build`` does);
each back-end then builds from the same chunks, so build time excludes chunking. The dense embedder is
loaded before the clock starts (build time = embedding + indexing); Lucene's includes its JVM start.

Queries: ``--queries`` chunks drawn with a fixed seed, each queried by a 24-word span from its middle;
recall@1 = the source chunk comes first. Throughput is measured after a warm-up, batched
(``retrieve_batch``, all queries at once) and one query at a time, with wall-clock time.
Results go to benchmarks/results/retrieval.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashback_rag.corpus import Document, chunk_documents, read_documents  # noqa: E402
from flashback_rag.indexing import load_tokenizer  # noqa: E402
from flashback_rag.io_utils import atomic_write_json, atomic_write_text, cache_root  # noqa: E402
from flashback_rag.retrievers import get_backend, load_index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {     # name -> (back-end, build options)
    "bm25": ("bm25", {}),
    "lucene": ("lucene", {}),
    "dense-flat": ("dense", {"index_type": "flat"}),
    "dense-hnsw": ("dense", {"index_type": "hnsw"}),
}


def python_doc_documents() -> list[Document]:
    """Debian's python3.11-doc reST sources (downloaded once into the cache)."""
    root = cache_root() / "python3.11-doc"
    if not root.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=tmp, check=True)
            deb = next(Path(tmp).glob("python3.11-doc_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
            root.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "x"), root)
    sources = sorted(root.rglob("_sources"))
    if not sources:
        raise SystemExit(f"no _sources folder in {root}")
    files = sorted(p for p in sources[0].rglob("*.txt") if p.is_file())
    return [d for f in files for d in read_documents(f)]


def corpus_documents(name: str) -> list[Document]:
    if name == "stdlib":
        from flashback_rag.stdlib_corpus import stdlib_documents

        return stdlib_documents()
    return python_doc_documents()


def make_queries(chunks: list[dict], count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    usable = [c for c in chunks if len(c["contents"].split()) >= 30]
    picked = rng.sample(usable, min(count, len(usable)))
    queries = []
    for chunk in picked:
        words = chunk["contents"].split()
        start = (len(words) - 24) // 2
        queries.append((chunk["id"], " ".join(words[start:start + 24])))
    return queries


def measure(name: str, chunks: list[dict], queries: list[tuple[str, str]], workdir: Path) -> dict:
    if name == "hybrid":                      # RRF over the bm25 and dense-flat folders built before
        from flashback_rag.retrievers import HybridRetriever

        backend, options, build_s = "bm25+dense", {"rrf_k": 60, "depth": 20}, None
        started = time.perf_counter()
        retriever = HybridRetriever([load_index(workdir / "bm25"), load_index(workdir / "dense-flat")])
        load_s = time.perf_counter() - started
        folder = workdir / "hybrid"
        folder.mkdir()
    else:
        backend, options = CONFIGS[name]
        cls = get_backend(backend)
        if backend == "dense":
            from flashback_rag.retrievers.dense import load_encoder

            load_encoder()                         # model load is not index building
        folder = workdir / name
        started = time.perf_counter()
        cls.build_folder(iter(chunks), folder, **options)
        build_s = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        retriever = load_index(folder)
        load_s = time.perf_counter() - started
    texts = [q for _, q in queries]
    retriever.retrieve_batch(texts[:8], 10)     # warm-up: JIT, caches, lazy model
    started = time.perf_counter()
    results = retriever.retrieve_batch(texts, 10)
    batch_s = time.perf_counter() - started
    single = texts[: min(100, len(texts))]
    started = time.perf_counter()
    for text in single:
        retriever.retrieve(text, 10)
    single_s = time.perf_counter() - started
    hits = sum(1 for (cid, _), found in zip(queries, results) if found and found[0].id == cid)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if name != "hybrid" else None
    return {"config": name, "backend": backend, "options": options, "chunks": len(chunks),
            "build_s": build_s, "load_s": round(load_s, 2),
            "qps_batched": round(len(texts) / batch_s, 1), "qps_single": round(len(single) / single_s, 1),
            "recall_at_1": round(hits / len(queries), 4), "queries": len(queries),
            "index_mb": None if size is None else round(size / 2**20, 1)}


def markdown(report: dict) -> str:
    lines = [f"# Retrieval back-ends on `{report['corpus']}` ({report['chunks']} chunks of "
             f"{report['chunk_tokens']} {report['tokenizer']} tokens)", "",
             f"Machine: {report['machine']}. Command: `{report['command']}`.", "",
             "| back-end | build (s) | load (s) | queries/s batched | queries/s one by one | recall@1 | index MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        lines.append(f"| {r['config']} | {'-' if r['build_s'] is None else r['build_s']} | {r['load_s']} | {r['qps_batched']} | {r['qps_single']} "
                     f"| {r['recall_at_1']:.3f} | {'-' if r['index_mb'] is None else r['index_mb']} |")
    lines += ["", f"recall@1: {report['queries']} chunks drawn with seed 0, each queried by a 24-word span from its "
              "middle; the source chunk must come first (a sanity check, not a quality claim). Top-10 retrieved.",
              "Build time excludes chunking and the embedder's load; Lucene's includes its JVM start. "
              "hybrid = reciprocal rank fusion (k=60) of the bm25 and dense-flat top-20.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["stdlib", "python-doc"], default="stdlib")
    parser.add_argument("--backends", nargs="+", choices=[*CONFIGS, "hybrid"], default=[*CONFIGS, "hybrid"],
                        help="hybrid (RRF) reuses the bm25 and dense-flat indexes: list it after them")
    parser.add_argument("--tokenizer", default="smollm2-135m")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite OUT.md from OUT.json and stop")
    args = parser.parse_args(argv)
    if args.markdown_only:
        atomic_write_text(args.out.with_suffix(".md"), markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return 0

    docs = corpus_documents(args.corpus)
    chunks = list(chunk_documents(docs, load_tokenizer(args.tokenizer), args.chunk_tokens))
    if args.max_chunks:
        chunks = chunks[: args.max_chunks]
    queries = make_queries(chunks, args.queries)
    print(f"{args.corpus}: {len(docs)} documents, {len(chunks)} chunks, {len(queries)} queries", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="flashback-bench-") as tmp:
        for name in args.backends:
            result = measure(name, chunks, queries, Path(tmp))
            print(json.dumps(result), flush=True)
            results.append(result)
    report = {"corpus": args.corpus, "documents": len(docs), "chunks": len(chunks), "tokenizer": args.tokenizer,
              "chunk_tokens": args.chunk_tokens, "queries": len(queries),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
                         f"load average {os.getloadavg()[0]:.1f} at the end (other jobs share the CPU)",
              "command": "python benchmarks/retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "results": results}
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
