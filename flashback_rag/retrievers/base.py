"""The retriever protocol, the Passage record, and the base class of the on-disk back-ends.

Anything with ``retrieve(query: str, k: int) -> list[Passage]`` is a retriever to the engine:

    >>> from flashback_rag.retrievers import Passage, Retriever
    >>> class Echo:
    ...     def retrieve(self, query, k):
    ...         return [Passage(id="0", text=query.upper())][:k]
    >>> isinstance(Echo(), Retriever)
    True

Back-ends that keep an index folder derive from :class:`IndexRetriever`, which adds batched search,
the forbidden-titles filter (applied at query time, by fetching more hits until ``k`` allowed ones are
found) and ``save`` / ``load``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable


@dataclass
class Passage:
    """One retrieved chunk: its id in the index, its text and title, and the back-end's score."""

    id: str
    text: str
    title: str = ""
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Passage":
        return cls(id=str(data["id"]), text=data["text"], title=data.get("title", "") or "",
                   score=float(data.get("score", 0.0)))


@runtime_checkable
class Retriever(Protocol):
    """What the engine needs from a retriever."""

    def retrieve(self, query: str, k: int) -> list[Passage]: ...


def retrieve_batch(retriever: Retriever, queries: Sequence[str], k: int) -> list[list[Passage]]:
    """Batched retrieval with any retriever: its own ``retrieve_batch`` when it has one."""
    batch = getattr(retriever, "retrieve_batch", None)
    if callable(batch):
        return batch(list(queries), k)
    return [retriever.retrieve(q, k) for q in queries]


def read_title_list(path: str | Path) -> set[str]:
    """One title a line (the seed's ``--forbid_titles_dir`` file); blank lines are ignored."""
    from ..errors import FlashBackError
    from ..io_utils import read_text

    path = Path(path)
    if not path.is_file():
        raise FlashBackError(f"no forbidden-titles file at {path}")
    return {line.strip() for line in read_text(path, "forbidden-titles file").splitlines() if line.strip()}


class IndexRetriever(abc.ABC):
    """Base of the back-ends that live in an index folder (bm25, lucene, dense)."""

    backend: ClassVar[str] = ""

    def __init__(self) -> None:
        self.forbidden_titles: set[str] = set()

    # -- what a back-end implements ---------------------------------------------------------
    @abc.abstractmethod
    def _search_batch(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query, best first, before any filtering."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of chunks in the index."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the index folder (chunks.jsonl, manifest.json and the back-end's files)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | Path) -> "IndexRetriever":
        """Read an index folder written by :meth:`save`."""

    @classmethod
    @abc.abstractmethod
    def from_chunks(cls, chunks: Iterable[dict[str, Any]], show_progress: bool = False,
                    manifest_extra: dict[str, Any] | None = None, **options: Any) -> "IndexRetriever":
        """An in-memory retriever over chunk records ``{"id", "title", "contents"}``."""

    @classmethod
    def build_folder(cls, chunks: Iterable[dict[str, Any]], directory: str | Path, show_progress: bool = False,
                     manifest_extra: dict[str, Any] | None = None, **options: Any) -> None:
        """Build the index folder ``directory`` from a stream of chunk records, atomically.

        The default builds in memory and saves; back-ends meant for large corpora (lucene, dense)
        override it to stream the chunks to disk instead of holding them.
        """
        cls.from_chunks(chunks, show_progress=show_progress, manifest_extra=manifest_extra, **options).save(directory)

    # -- shared behaviour --------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Sequence[str], titles: Sequence[str] | None = None,
              ids: Sequence[str] | None = None, **options: Any) -> "IndexRetriever":
        """Index ``texts`` (with optional ``titles`` and ``ids``); ``options`` go to ``from_chunks``."""
        from ..errors import ConfigError

        # one string would be indexed letter by letter, a None as the passage "None"
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
            raise ConfigError(f"texts must be a list of strings, got {type(texts).__name__}")
        texts = list(texts)
        for name, values in (("texts", texts), ("titles", titles)):
            wrong = next((i for i, v in enumerate(values or []) if not isinstance(v, str)), None)
            if wrong is not None:
                raise ConfigError(f"{name} must be strings; item {wrong} is {type(values[wrong]).__name__}")
        if titles is not None and len(titles) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(titles)} titles")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        chunks = ({"id": str(ids[i]) if ids is not None else str(i),
                   "title": titles[i] if titles is not None else "", "contents": text}
                  for i, text in enumerate(texts))
        return cls.from_chunks(chunks, **options)

    def set_forbidden_titles(self, titles: Iterable[str] | str | Path | None) -> "IndexRetriever":
        """Never return passages with these titles (a set, or a file with one title a line)."""
        if titles is None:
            self.forbidden_titles = set()
        elif isinstance(titles, (str, Path)):
            self.forbidden_titles = read_title_list(titles)
        else:
            self.forbidden_titles = {t.strip() for t in titles if t and t.strip()}
        return self

    def retrieve(self, query: str, k: int) -> list[Passage]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` allowed passages for each query, in one batched search where possible."""
        from ..errors import ConfigError

        if isinstance(queries, str) or not isinstance(queries, Iterable):
            raise ConfigError(f"queries must be a list of strings, got {type(queries).__name__}")
        queries = list(queries)
        wrong = next((q for q in queries if not isinstance(q, str)), None)
        if any(not isinstance(q, str) for q in queries):
            raise ConfigError(f"a query must be a string, got {wrong!r}")
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"k must be an integer, got {k!r}")
        if k <= 0 or not queries:
            return [[] for _ in queries]
        size = len(self)
        if not self.forbidden_titles:
            return self._search_batch(queries, min(k, size))
        # Over-fetch, and fetch again with a larger depth only for the queries still short of k.
        results: list[list[Passage] | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        depth = min(size, 2 * k + 8)
        while pending:
            hits = self._search_batch([queries[i] for i in pending], depth)
            still = []
            for i, found in zip(pending, hits):
                allowed = [p for p in found if p.title not in self.forbidden_titles]
                if len(allowed) >= k or depth >= size or len(found) < depth:
                    results[i] = allowed[:k]
                else:
                    still.append(i)
            pending = still
            depth = min(size, depth * 4)
        return [r or [] for r in results]
