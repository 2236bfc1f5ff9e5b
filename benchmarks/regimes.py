"""The quality benchmark's corpus and its two retrieval regimes, for every benchmark that retrieves for real.

    python benchmarks/regimes.py          # fetch the corpus, build the indexes once, print what they hold

Corpus: the Python 3.11 documentation sources (``flashback_rag.python_doc_corpus``), split by a seeded hash
of their titles into *index*, *train* and *validation* documents (30% train, 10% validation). The regimes:

- ``related``: BM25 over the index documents only, disjoint from the text being predicted;
- ``copy``: BM25 over every document, the evaluated ones included (RAG over a corpus that holds the answer).

``copy-train`` (index + train documents) is what training retrieves from in the copy regime: the
validation documents stay out of everything a model is trained on. Indexes are BM25 over chunks of
``chunk_tokens`` tokens (the shipped model's 64), built once in the work folder and reused.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from flashback_rag.corpus import Document, chunk_documents  # noqa: E402
from flashback_rag.io_utils import cache_root  # noqa: E402
from flashback_rag.python_doc_corpus import python_docs, split_three_ways  # noqa: E402

REGIMES = ("related", "copy")
# which parts of the split each index holds; a regime evaluates with its own index
INDEX_PARTS = {"related": ("index",), "copy-train": ("index", "train"), "copy-eval": ("index", "train", "validation")}
EVAL_INDEX = {"related": "related", "copy": "copy-eval"}
TRAIN_INDEX = {"related": "related", "copy": "copy-train"}
SEED = 42
CHUNK_TOKENS = 64


def default_work() -> Path:
    return cache_root() / "quality"


def corpus(work: Path | None = None, seed: int = SEED) -> tuple[dict[str, list[Document]], str]:
    """``({"index": [...], "train": [...], "validation": [...]}, corpus name)``."""
    docs, name = python_docs(Path(work or default_work()))
    return split_three_ways(docs, seed, train_share=0.3, val_share=0.1), name


def build_index(folder: Path, docs: list[Document], tokenizer, chunk_tokens: int = CHUNK_TOKENS):
    """The BM25 index of ``docs`` in ``folder`` (built on first use, loaded after)."""
    from flashback_rag.retrievers import BM25Retriever

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        chunks = list(chunk_documents(docs, tokenizer, chunk_tokens))
        BM25Retriever.from_chunks(chunks, manifest_extra={"chunking": {"chunk_tokens": chunk_tokens}}).save(folder)
    return BM25Retriever.load(folder)


def regime_indexes(folder: Path, parts: dict[str, list[Document]], tokenizer, names=tuple(INDEX_PARTS),
                   chunk_tokens: int = CHUNK_TOKENS) -> dict[str, Any]:
    """``{name: retriever}`` for the named indexes of :data:`INDEX_PARTS`, kept in ``folder/index-NAME``."""
    return {name: build_index(Path(folder) / f"index-{name}", [d for part in INDEX_PARTS[name] for d in parts[part]],
                              tokenizer, chunk_tokens) for name in names}


def eval_retrievers(tokenizer, work: Path | None = None, seed: int = SEED, chunk_tokens: int = CHUNK_TOKENS
                    ) -> tuple[dict[str, list[Document]], dict[str, Any], str]:
    """``(parts, {regime: retriever}, corpus name)``: what an evaluation on the validation documents reads."""
    work = Path(work or default_work())
    parts, name = corpus(work, seed)
    folder = work / f"regimes-seed{seed}-chunk{chunk_tokens}-{tokenizer_tag(tokenizer)}"
    indexes = regime_indexes(folder, parts, tokenizer, tuple(EVAL_INDEX.values()), chunk_tokens)
    return parts, {regime: indexes[EVAL_INDEX[regime]] for regime in REGIMES}, name


def tokenizer_tag(tokenizer) -> str:
    from flashback_rag.adapters import tokenizer_fingerprint

    return tokenizer_fingerprint(tokenizer)


def main() -> int:
    from flashback_rag.indexing import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    parts, retrievers, name = eval_retrievers(tokenizer)
    print(f"{name}: " + ", ".join(f"{k} {len(v)} documents" for k, v in parts.items()))
    for regime, retriever in retrievers.items():
        print(f"  {regime}: {retriever!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
