"""Retriever back-ends by name, imported lazily so a missing optional package only matters when used.

    >>> from flashback_rag.retrievers import available_backends, get_backend
    >>> "bm25" in available_backends()
    True
    >>> get_backend("bm25").__name__
    'BM25Retriever'
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError

# name -> "module:Class"; a back-end's module imports its heavy packages only when it is used.
_BACKENDS: dict[str, str] = {
    "bm25": "flashback_rag.retrievers.bm25:BM25Retriever",
    "lucene": "flashback_rag.retrievers.lucene:LuceneRetriever",
    "dense": "flashback_rag.retrievers.dense:DenseRetriever",
}


def register_backend(name: str, target: str) -> None:
    """Register a back-end as ``"package.module:ClassName"`` (what ``load_index`` dispatches on)."""
    _BACKENDS[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type:
    """The retriever class registered under ``name``."""
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown retrieval back-end {name!r}; choose one of "
                          f"{', '.join(available_backends())}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
