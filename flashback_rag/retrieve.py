"""``flashback retrieve``: run retrieval over documents once and write records others reuse.

    $ flashback retrieve --index my-index --input hf:wikitext:wikitext-103-raw-v1:test \\
          --stride 16 --query-tokens 32 --top-k 2 --forbidden-titles titles.txt --out records.jsonl

For each document, every ``stride`` tokens (in the ``--tokenizer``'s tokens; the LM's own, default
smollm2-135m), the last ``query-tokens`` tokens are the query; the top-k passages are searched in
batches and written with the position (format: :mod:`flashback_rag.retrieval_records`).

    >>> import tempfile, pathlib
    >>> from flashback_rag.retrievers import BM25Retriever
    >>> from flashback_rag.retrieve import retrieve_documents
    >>> from flashback_rag.corpus import Document
    >>> r = BM25Retriever.build(["Cats purr when content.", "Dogs bark at night."], titles=["Cats", "Dogs"])
    >>> docs = list(retrieve_documents(r, [Document("Pets", "my dog will bark all night long")],
    ...                                tokenizer=None, stride=3, query_tokens=3, top_k=1))
    >>> [(p.position, p.query, p.passages[0].title) for p in docs[0].points]
    [(3, 'my dog will', 'Dogs'), (6, 'bark all night', 'Dogs')]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .corpus import Document, encode_long, read_documents
from .errors import ConfigError, FlashBackError
from .retrievers.base import retrieve_batch
from .retrieval_records import RecordDocument, RetrievalPoint, retrieval_positions, write_records


def _tokens(text: str, tokenizer: Any) -> list[Any]:
    if tokenizer is None:
        return text.split()
    return encode_long(tokenizer, text)       # a huge single-line document in bounded memory


def _decode(tokens: list[Any], tokenizer: Any) -> str:
    if tokenizer is None:
        return " ".join(tokens)
    return tokenizer.decode(tokens, skip_special_tokens=True)


def retrieve_documents(retriever: Any, documents: Iterable[Document], tokenizer: Any, stride: int = 16,
                       query_tokens: int = 32, top_k: int = 1, first_position: int | None = None,
                       exclude_own_title: bool = False, batch_size: int = 256,
                       max_documents: int | None = None) -> Iterator[RecordDocument]:
    """Retrieval records for ``documents``: one batched search per document (chunks of ``batch_size``).

    ``exclude_own_title`` adds each document's title to the retriever's forbidden titles while its
    queries run (WikiText evaluation must not retrieve the article it is scoring).
    """
    for name, value in (("stride", stride), ("query_tokens", query_tokens), ("top_k", top_k),
                        ("batch_size", batch_size)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    base_forbidden = set(getattr(retriever, "forbidden_titles", set()))
    try:
        for number, document in enumerate(documents):
            if max_documents is not None and number >= max_documents:
                break
            tokens = _tokens(document.text, tokenizer)
            positions = retrieval_positions(len(tokens), stride, first_position)
            starts = [max(0, i - query_tokens) for i in positions]
            queries = [_decode(tokens[j:i], tokenizer) for j, i in zip(starts, positions)]
            if exclude_own_title and document.title:
                retriever.set_forbidden_titles(base_forbidden | {document.title})
            passages: list[list[Any]] = []
            for at in range(0, len(queries), batch_size):
                passages.extend(retrieve_batch(retriever, queries[at:at + batch_size], top_k))
            yield RecordDocument(doc=number, title=document.title, text=document.text, num_tokens=len(tokens),
                                 points=[RetrievalPoint(doc=number, position=i, query_start=j, query=q, passages=p)
                                         for i, j, q, p in zip(positions, starts, queries, passages)])
    finally:
        if exclude_own_title:
            retriever.set_forbidden_titles(base_forbidden)


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .indexing import load_tokenizer
    from .retrievers import load_index, read_manifest

    retriever = load_index(args.index, forbidden_titles=args.forbidden_titles, embedder=args.embedder)
    manifest = read_manifest(args.index)
    tokenizer = load_tokenizer(args.tokenizer)
    source = args.input
    if not source.startswith("hf:") and not Path(source).exists():
        if " " not in source.strip() and ("/" in source or Path(source).suffix):
            raise FlashBackError(f"no such file or folder: {source} (to retrieve for a literal text, "
                                 "give a text with spaces)")
        documents: Iterable[Document] = [Document(title="", text=source)]   # a literal text
        source = "<text>"
    else:
        documents = read_documents(source)
    records = retrieve_documents(retriever, documents, tokenizer, stride=args.stride,
                                 query_tokens=args.query_tokens, top_k=args.top_k,
                                 first_position=args.first_position, exclude_own_title=args.exclude_own_title,
                                 batch_size=args.batch_size, max_documents=args.max_docs)
    header = {"tokenizer": args.tokenizer, "stride": args.stride, "query_tokens": args.query_tokens,
              "top_k": args.top_k, "first_position": args.first_position or args.stride,
              "index": str(args.index), "backend": manifest["backend"], "source": source,
              "index_chunking": manifest.get("chunking"), "exclude_own_title": args.exclude_own_title,
              "forbidden_titles": sorted(retriever.forbidden_titles)}
    records = tqdm(records, desc="retrieving", unit=" docs", disable=args.quiet)
    points = 0

    def counted() -> Iterator[RecordDocument]:
        nonlocal points
        for document in records:
            points += len(document.points)
            yield document

    count = write_records(args.out, header, counted())
    print(f"wrote {points} retrieval points for {count} documents to {args.out}")
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("retrieve", help="write retrieval records (position, query, passages) for documents")
    p.add_argument("--index", required=True, help="index folder (any back-end)")
    p.add_argument("--input", required=True,
                   help="a text, a file or folder, a save_to_disk folder, or hf:NAME[:CONFIG[:SPLIT]]")
    p.add_argument("--out", required=True, help="records file to write (JSONL)")
    p.add_argument("--stride", type=int, default=16, help="retrieve every N tokens (default 16)")
    p.add_argument("--query-tokens", type=int, default=32, help="query = the last N tokens (default 32)")
    p.add_argument("--top-k", type=int, default=1, help="passages per retrieval point (default 1)")
    p.add_argument("--first-position", type=int, default=None, help="first retrieval position (default: stride)")
    p.add_argument("--tokenizer", default="smollm2-135m",
                   help="tokenizer that counts positions: the LM's (alias/folder/id) or 'words'")
    p.add_argument("--forbidden-titles", help="file with one title a line never to retrieve")
    p.add_argument("--embedder", help="dense index: the embedding model to query with")
    p.add_argument("--exclude-own-title", action="store_true",
                   help="also never retrieve passages titled like the document being processed")
    p.add_argument("--batch-size", type=int, default=256, help="queries per batched search")
    p.add_argument("--max-docs", type=int, default=None, help="stop after N documents")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_retrieve)
