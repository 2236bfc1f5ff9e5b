"""Build an index folder from a corpus: read, chunk, index, write atomically.

    >>> import tempfile, pathlib
    >>> from flashback_rag.indexing import build_index
    >>> src = pathlib.Path(tempfile.mkdtemp()) / "notes.md"
    >>> _ = src.write_text("# Cats\\nCats purr when they are content.")
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> build_index(src, out, tokenizer="words", chunk_tokens=64)["num_chunks"]
    1

The folder appears only when it is complete (see ``io_utils.atomic_directory``): an interrupted build
leaves the previous index, or nothing.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .corpus import chunk_documents, read_documents
from .errors import ConfigError, EmptyCorpusError, FlashBackError
from .io_utils import check_apart, holding
from .retrievers.index_folder import read_manifest
from .retrievers.registry import get_backend


def load_tokenizer(name: str | None):
    """A tokenizer for chunking: a model alias / folder / hub id, or ``words`` (whitespace, no model)."""
    if name in (None, "", "words"):
        return None
    from .models import ALIASES, base_alias, load_model

    name = base_alias(name)                 # a shipped FlashBack model reads with its base's tokenizer
    if name.startswith("tiny-random-"):
        return load_model(name)[1]
    if name in ALIASES:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ALIASES[name][1]())
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(f"could not load tokenizer {name!r}: {str(err).splitlines()[0]}") from None


def backend_options(backend_class: type) -> set[str]:
    """The keyword options a back-end's builder accepts (beyond chunks, folder, progress, manifest)."""
    names: set[str] = set()
    for method in (backend_class.build_folder, getattr(backend_class, "from_chunks", None)):
        if method is None:
            continue
        params = inspect.signature(method).parameters.values()
        names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY or
                  (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)}
    return names - {"show_progress", "manifest_extra"}


def build_index(source: str | Path, out: str | Path, backend: str = "bm25", chunk_tokens: int = 128,
                tokenizer: str | None = "smollm2-135m", show_progress: bool = False,
                **options: Any) -> dict[str, Any]:
    """Chunk ``source`` and build a ``backend`` index in ``out``; return the manifest.

    The chunks are streamed from the corpus to the back-end: lucene and dense write them to disk as
    they come, so a large corpus is never held in memory as a whole (bm25 keeps them, by design).
    """
    if not str(source).startswith("hf:") and not Path(source).expanduser().exists():
        raise FlashBackError(f"no such file or folder: {source}")
    # an index never replaces its corpus (inside its folder it may sit: the corpus reader skips it)
    check_apart(out, "--out", [("--input", source)], may_hold={"--input"})
    backend_class = get_backend(backend)
    unknown = sorted(set(options) - backend_options(backend_class))
    if unknown:
        raise ConfigError(f"the {backend} back-end has no option {', '.join(unknown)} "
                          f"(it takes: {', '.join(sorted(backend_options(backend_class))) or 'none'})")
    # The write lock for the whole build, not only while saving: a second build to the same folder is
    # refused at once instead of both succeeding and the later silently replacing the other.
    with holding(out):
        tok = load_tokenizer(tokenizer)
        chunks = chunk_documents(read_documents(source), tok, chunk_tokens)
        if show_progress:
            chunks = tqdm(chunks, desc="chunking", unit=" chunks")
        extra = {"chunking": {"chunk_tokens": chunk_tokens, "tokenizer": tokenizer or "words"},
                 "source": str(source)}
        try:
            backend_class.build_folder(chunks, out, show_progress=show_progress, manifest_extra=extra, **options)
        except EmptyCorpusError:
            raise EmptyCorpusError(f"{source} has no text to index") from None
    return read_manifest(out)
