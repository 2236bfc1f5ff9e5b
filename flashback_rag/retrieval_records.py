"""Retrieval records: what was retrieved where, saved once and reused without the index.

In the in-context-ralm style, retrieval is its own step. ``flashback retrieve`` writes a JSONL file;
data preparation (training) and perplexity evaluation read it back with :func:`read_records`.

The file, one JSON object a line:

1. a header, ``{"type": "header", "format": "flashback-retrieval-records", "version": 1,
   "tokenizer", "stride", "query_tokens", "top_k", "index", "backend", "source", ...}``;
2. for each document, a ``{"type": "document", "doc": 0, "title", "text", "num_tokens"}`` line, then
   one ``{"type": "point", "doc": 0, "position": i, "query_start": j, "query": "...",
   "passages": [{"id", "title", "score", "text"}, ...]}`` line per retrieval point.

``position`` ``i`` is a token offset in the document as the header's tokenizer splits ``text``
(``tokenizer(text, add_special_tokens=False)``, or whitespace words for ``"words"``): the passages
were retrieved with the query ``tokens[j:i]`` and serve the next ``stride`` tokens ``tokens[i:i+stride]``
(FlashBack: ``x[:i] + <MARK_L> passage <MARK_R>``, then ``x[i:i+stride]``). Passages are best first.

    >>> import tempfile, pathlib
    >>> from flashback_rag.retrievers import Passage
    >>> from flashback_rag.retrieval_records import (RecordDocument, RetrievalPoint, read_records,
    ...                                              write_records)
    >>> doc = RecordDocument(doc=0, title="Cats", text="cats purr a lot", num_tokens=4, points=[
    ...     RetrievalPoint(doc=0, position=2, query_start=0, query="cats purr",
    ...                    passages=[Passage(id="7", text="Purring is ...", title="Purr", score=3.5)])])
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "records.jsonl"
    >>> write_records(path, {"tokenizer": "words", "stride": 2}, [doc])
    1
    >>> header, docs = read_records(path)
    >>> header["stride"], [p.passages[0].id for d in docs for p in d.points]
    (2, ['7'])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FlashBackError
from .io_utils import atomic_open, iter_text_lines
from .retrievers.base import Passage

FORMAT_NAME = "flashback-retrieval-records"
FORMAT_VERSION = 1


@dataclass
class RetrievalPoint:
    """Passages retrieved at token ``position`` of document ``doc`` with the query ``tokens[query_start:position]``."""

    doc: int
    position: int
    query_start: int
    query: str
    passages: list[Passage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "point", "doc": self.doc, "position": self.position, "query_start": self.query_start,
                "query": self.query, "passages": [p.to_dict() for p in self.passages]}


@dataclass
class RecordDocument:
    """One input document and its retrieval points, in position order."""

    doc: int
    title: str
    text: str
    num_tokens: int
    points: list[RetrievalPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "document", "doc": self.doc, "title": self.title, "text": self.text,
                "num_tokens": self.num_tokens}

    def passages_at(self) -> dict[int, list[Passage]]:
        """``{position: passages}``, what an evaluator looks up at each retrieval point."""
        return {p.position: p.passages for p in self.points}


def retrieval_positions(num_tokens: int, stride: int, first: int | None = None) -> list[int]:
    """Where retrieval happens in a document of ``num_tokens``: ``first`` (default ``stride``), then every
    ``stride`` tokens, while tokens remain to be served.

    >>> retrieval_positions(40, 16)
    [16, 32]
    """
    if stride <= 0:
        raise FlashBackError(f"stride must be positive, got {stride}")
    first = stride if first is None else first
    if first <= 0:
        raise FlashBackError(f"the first retrieval position must be positive (a query needs tokens), got {first}")
    return list(range(first, num_tokens, stride))


def write_records(path: str | Path, header: dict[str, Any], documents: Iterable[RecordDocument]) -> int:
    """Stream ``documents`` to ``path`` (atomically: the file appears only when complete); return how many."""
    count = 0
    with atomic_open(Path(path)) as handle:       # appears only when complete, readable per the umask
        handle.write(json.dumps({**header, "type": "header", "format": FORMAT_NAME, "version": FORMAT_VERSION},
                                ensure_ascii=False) + "\n")
        for document in documents:
            handle.write(json.dumps(document.to_dict(), ensure_ascii=False) + "\n")
            for point in document.points:
                handle.write(json.dumps(point.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _iter_documents(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[RecordDocument]:
    current: RecordDocument | None = None
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = record["type"]
            if kind == "document":
                if current is not None:
                    yield current
                current = RecordDocument(doc=int(record["doc"]), title=record.get("title", ""),
                                         text=record["text"], num_tokens=int(record["num_tokens"]))
            elif kind == "point":
                if current is None or int(record["doc"]) != current.doc:
                    raise ValueError("a point outside its document")
                current.points.append(RetrievalPoint(
                    doc=current.doc, position=int(record["position"]), query_start=int(record["query_start"]),
                    query=record["query"], passages=[Passage.from_dict(p) for p in record["passages"]]))
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (ValueError, KeyError, TypeError) as err:
            raise FlashBackError(f"{path} line {number} is not a retrieval record: {err}") from None
    if current is not None:
        yield current


def read_records(path: str | Path) -> tuple[dict[str, Any], Iterator[RecordDocument]]:
    """The header and a stream of documents (each with its points) of a records file."""
    path = Path(path)
    if not path.is_file():
        raise FlashBackError(f"no retrieval records at {path}")
    lines = iter_text_lines(path, "retrieval records")     # strict UTF-8, one line at a time
    try:
        header = json.loads(next(lines, (1, "null"))[1])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        lines.close()
        raise FlashBackError(f"{path} is not a retrieval records file (write one with `flashback retrieve`)")
    version = header.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        lines.close()
        raise FlashBackError(f"{path}: the header's version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        lines.close()
        raise FlashBackError(f"{path} was written by a newer flashback-rag (version {header['version']})")
    return header, _iter_documents(path, lines)


def load_records(path: str | Path) -> tuple[dict[str, Any], list[RecordDocument]]:
    """Like :func:`read_records`, all in memory."""
    header, documents = read_records(path)
    return header, list(documents)
