"""HybridRetriever: reciprocal rank fusion (RRF) of several retrievers, e.g. BM25 + dense.

Each retriever ranks ``depth`` passages; a passage scores ``sum(1 / (rrf_k + rank))`` over the
lists it appears in (rank from 1), so agreement between lexical and semantic search wins without
calibrating their scores. Passages are matched by id, so fuse indexes built from the same chunks.

    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from flashback_rag.retrievers.hybrid import HybridRetriever
    >>> texts, titles = ["Cats purr when content.", "Dogs bark at night."], ["Cats", "Dogs"]
    >>> a = BM25Retriever.build(texts, titles=titles)
    >>> b = BM25Retriever.build(texts, titles=titles, stemmer=None)
    >>> [p.title for p in HybridRetriever([a, b]).retrieve("barking dogs", k=1)]
    ['Dogs']

    load_index(dir) for each folder, then HybridRetriever([bm25, dense]); forbidden titles set on the
    hybrid apply to every part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from .base import Passage, Retriever, read_title_list, retrieve_batch


class HybridRetriever:
    """Fuse the rankings of ``retrievers`` with RRF; batched when the parts are."""

    def __init__(self, retrievers: Sequence[Retriever], rrf_k: int = 60, depth: int = 20) -> None:
        if len(retrievers) < 1:
            raise ConfigError("HybridRetriever needs at least one retriever")
        if rrf_k < 0 or depth <= 0:
            raise ConfigError(f"rrf_k must be >= 0 and depth > 0, got {rrf_k} and {depth}")
        self.retrievers = list(retrievers)
        self.rrf_k = rrf_k
        self.depth = depth
        self.forbidden_titles: set[str] = set()

    def set_forbidden_titles(self, titles: Iterable[str] | str | Path | None) -> "HybridRetriever":
        if isinstance(titles, (str, Path)):
            titles = read_title_list(titles)
        self.forbidden_titles = {t.strip() for t in titles or () if t and t.strip()}
        for part in self.retrievers:
            if hasattr(part, "set_forbidden_titles"):
                part.set_forbidden_titles(self.forbidden_titles)
        return self

    def retrieve(self, query: str, k: int) -> list[Passage]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        queries = list(queries)
        if k <= 0 or not queries:
            return [[] for _ in queries]
        depth = max(k, self.depth)
        rankings = [retrieve_batch(part, queries, depth) for part in self.retrievers]
        fused = []
        for i in range(len(queries)):
            scores: dict[str, float] = {}
            first_seen: dict[str, Passage] = {}
            for ranking in rankings:
                for rank, passage in enumerate(ranking[i], 1):
                    if passage.title in self.forbidden_titles:
                        continue          # parts without a filter of their own
                    scores[passage.id] = scores.get(passage.id, 0.0) + 1.0 / (self.rrf_k + rank)
                    first_seen.setdefault(passage.id, passage)
            best = sorted(scores, key=lambda pid: (-scores[pid], pid))[:k]
            fused.append([replace(first_seen[pid], score=scores[pid]) for pid in best])
        return fused
