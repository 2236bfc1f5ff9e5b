"""Retrieval for flashback-rag: the protocol, the Passage record, back-ends by name, index folders.

    >>> from flashback_rag.retrievers import BM25Retriever, load_index
    >>> r = BM25Retriever.build(["Paris is the capital of France."], titles=["France"])
    >>> r.retrieve("capital of France", k=1)[0].title
    'France'

``load_index(dir)`` reads any index folder (bm25, lucene, dense); the manifest says which back-end
wrote it. ``HybridRetriever([a, b])`` fuses several with reciprocal rank fusion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .base import IndexRetriever, Passage, Retriever, read_title_list, retrieve_batch
from .bm25 import BM25Retriever
from .hybrid import HybridRetriever
from .index_folder import read_manifest
from .registry import available_backends, get_backend, register_backend


def load_index(directory: str | Path, forbidden_titles: Iterable[str] | str | Path | None = None,
               embedder: str | None = None) -> IndexRetriever:
    """Load an index folder of any back-end; optionally exclude passages with forbidden titles.

    ``embedder`` (dense indexes): the embedding model to use, your choice; without it only a packaged
    model or one inside the index folder is loaded (never a path or hub name the manifest alone names).
    """
    manifest = read_manifest(directory)
    backend = get_backend(manifest["backend"])
    if embedder is not None:
        if manifest["backend"] != "dense":
            from ..errors import ConfigError

            raise ConfigError(f"--embedder applies to dense indexes; {directory} is a {manifest['backend']} index")
        retriever = backend.load(directory, embedder=embedder)
    else:
        retriever = backend.load(directory)
    if forbidden_titles is not None:
        retriever.set_forbidden_titles(forbidden_titles)
    return retriever


__all__ = [
    "BM25Retriever", "HybridRetriever", "IndexRetriever", "Passage", "Retriever", "available_backends", "get_backend",
    "load_index", "read_manifest", "read_title_list", "register_backend", "retrieve_batch",
]
