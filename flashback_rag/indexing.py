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

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .corpus import chunk_documents, read_documents
from .errors import EmptyCorpusError, FlashBackError
from .retrievers.index_folder import read_manifest
from .retrievers.registry import get_backend


def load_tokenizer(name: str | None):
    """A tokenizer for chunking: a model alias / folder / hub id, or ``words`` (whitespace, no model)."""
    if name in (None, "", "words"):
        return None
    from .models import ALIASES, load_model

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


def build_index(source: str | Path, out: str | Path, backend: str = "bm25", chunk_tokens: int = 128,
                tokenizer: str | None = "smollm2-135m", show_progress: bool = False,
                **backend_options: Any) -> dict[str, Any]:
    """Chunk ``source`` and build a ``backend`` index in ``out``; return the manifest."""
    if not str(source).startswith("hf:") and not Path(source).expanduser().exists():
        raise FlashBackError(f"no such file or folder: {source}")
    tok = load_tokenizer(tokenizer)
    chunks = chunk_documents(read_documents(source), tok, chunk_tokens)
    if show_progress:
        chunks = tqdm(chunks, desc="chunking", unit=" chunks")
    chunks = list(chunks)
    if not chunks:
        raise EmptyCorpusError(f"{source} has no text to index")
    extra = {"chunking": {"chunk_tokens": chunk_tokens, "tokenizer": tokenizer or "words"},
             "source": str(source)}
    retriever = get_backend(backend).from_chunks(chunks, show_progress=show_progress,
                                                 manifest_extra=extra, **backend_options)
    retriever.save(out)
    return read_manifest(out)
