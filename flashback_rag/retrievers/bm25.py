"""BM25Retriever: the embedded default back-end, on ``bm25s`` (sparse matrices, no JVM).

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> r = BM25Retriever.build(["The cat sat on the mat.", "Dogs bark at night."],
    ...                         titles=["Cats", "Dogs"])
    >>> [p.title for p in r.retrieve("why do dogs bark", k=1)]
    ['Dogs']

Titles are indexed with the text (a chunk's title often names what it is about). Hits that share no
term with the query (score 0) are dropped: no passage is better than a random one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import EmptyCorpusError, IndexFormatError, MissingDependencyError
from ..io_utils import atomic_directory
from .base import IndexRetriever, Passage
from .index_folder import (
    CHUNKS_FILE,
    MANIFEST_FILE,
    check_fields,
    iter_chunks,
    read_manifest,
    write_chunks,
    write_manifest,
)

_STATE_DIR = "bm25"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise MissingDependencyError("the bm25 back-end needs bm25s: pip install bm25s PyStemmer") from None
    # bm25s sets its own logger to DEBUG on import; its progress chatter is not our users' business.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _stemmer(language: str | None):
    if not language:
        return None
    try:
        import Stemmer
    except ImportError:
        return None   # bm25s works without stemming; recall is a little lower
    if language not in Stemmer.algorithms():
        raise IndexFormatError(f"unknown stemmer language {language!r}; PyStemmer has "
                               f"{', '.join(Stemmer.algorithms())}")
    return Stemmer.Stemmer(language)


class BM25Retriever(IndexRetriever):
    """Okapi BM25 over the chunks of an index folder."""

    backend = "bm25"

    def __init__(self, chunks: list[dict[str, Any]], model: Any, stemmer: str | None = "english",
                 stopwords: str | None = "en", manifest_extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.chunks = chunks
        self.model = model
        self.stemmer_language = stemmer
        self.stopwords = stopwords
        self.manifest_extra = dict(manifest_extra or {})
        self._stem = _stemmer(stemmer)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_chunks(cls, chunks: Iterable[dict[str, Any]], stemmer: str | None = "english",
                    stopwords: str | None = "en", show_progress: bool = False,
                    manifest_extra: dict[str, Any] | None = None) -> "BM25Retriever":
        bm25s = _bm25s()
        chunks = [c for c in chunks if str(c.get("contents", "")).strip()]
        if not chunks:
            raise EmptyCorpusError("the corpus has no text to index")
        corpus = [f"{c.get('title') or ''}\n{c['contents']}" for c in chunks]
        tokens = bm25s.tokenize(corpus, stopwords=stopwords, stemmer=_stemmer(stemmer),
                                show_progress=show_progress)
        if not tokens.vocab:
            raise EmptyCorpusError("the corpus has no indexable words (only stopwords or symbols)")
        model = bm25s.BM25()
        model.index(tokens, show_progress=show_progress)
        return cls(chunks, model, stemmer=stemmer, stopwords=stopwords, manifest_extra=manifest_extra)

    # -- searching --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def _search_batch(self, queries: list[str], k: int) -> list[list[Passage]]:
        bm25s = _bm25s()
        k = min(k, len(self.chunks))
        out: list[list[Passage]] = [[] for _ in queries]
        # bm25s cannot score a query with no known term; those get no passage.
        tokenized = bm25s.tokenize(queries, stopwords=self.stopwords, stemmer=self._stem,
                                   show_progress=False, return_ids=False)
        live = [i for i, toks in enumerate(tokenized) if toks]
        if not live or k <= 0:
            return out
        docs, scores = self.model.retrieve([tokenized[i] for i in live], k=k, show_progress=False,
                                           n_threads=1)
        for row, i in enumerate(live):
            for doc, score in zip(docs[row], scores[row]):
                if score <= 0:
                    continue
                chunk = self.chunks[int(doc)]
                out[i].append(Passage(id=str(chunk["id"]), text=chunk["contents"],
                                      title=chunk.get("title", "") or "", score=float(score)))
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the index folder atomically: the old folder stays until the new one is complete."""
        with atomic_directory(Path(directory), owner_file=MANIFEST_FILE) as tmp:
            write_chunks(tmp / CHUNKS_FILE, self.chunks)
            self.model.save(str(tmp / _STATE_DIR))
            write_manifest(tmp, self.backend, len(self.chunks),
                           bm25={"stemmer": self.stemmer_language, "stopwords": self.stopwords},
                           **self.manifest_extra)

    @classmethod
    def load(cls, directory: str | Path) -> "BM25Retriever":
        bm25s = _bm25s()
        directory = Path(directory)
        manifest = read_manifest(directory, backend=cls.backend)
        options = manifest.get("bm25", {})
        check_fields(directory / MANIFEST_FILE, options, {"stemmer": str, "stopwords": str}, optional=True)
        _stemmer(options.get("stemmer", "english"))        # an unknown language fails here, not at query time
        chunks = list(iter_chunks(directory / CHUNKS_FILE))
        if not (directory / _STATE_DIR).is_dir():
            raise IndexFormatError(f"{directory} is missing its bm25 state folder")
        try:
            model = bm25s.BM25.load(str(directory / _STATE_DIR))
        except Exception as err:  # bm25s raises a variety of errors on damaged files
            raise IndexFormatError(f"{directory}: cannot read the bm25 state ({err})") from None
        indexed = getattr(model, "scores", {}).get("num_docs", len(chunks))
        if not len(chunks) == manifest["num_chunks"] == indexed:
            raise IndexFormatError(f"{directory}: manifest says {manifest['num_chunks']} chunks, "
                                   f"{CHUNKS_FILE} has {len(chunks)}, the bm25 state {indexed}")
        extra = {k: v for k, v in manifest.items()
                 if k not in {"format", "version", "backend", "num_chunks", "created", "bm25"}}
        return cls(chunks, model, stemmer=options.get("stemmer", "english"),
                   stopwords=options.get("stopwords", "en"), manifest_extra=extra)
