"""Corpus readers and token chunking: text files, folders and JSONL in, ``{"id", "title", "contents"}`` out.

    >>> from flashback_rag.corpus import Document, chunk_documents
    >>> from flashback_rag.models import byte_level_tokenizer
    >>> docs = [Document(title="Greeting", text="hello world, hello again")]
    >>> [c["contents"] for c in chunk_documents(docs, byte_level_tokenizer(), chunk_tokens=12)]
    ['hello world,', ' hello again']

Chunks are windows of ``chunk_tokens`` tokens of a given tokenizer (the seed's ``data2jsonl`` uses 128),
each keeping its document's title. Readers:
- ``.txt`` / ``.md`` / ``.rst`` files: one document each, titled by the first Markdown/reST heading or
  the file name;
- ``.jsonl`` / ``.json`` lines: ``text`` (or ``contents``) and an optional ``title`` per line;
- folders: every such file below them, in sorted order;
- ``hf:NAME[:CONFIG[:SPLIT]]`` and ``save_to_disk`` folders: Hugging Face datasets (see ``hf_corpus``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EmptyCorpusError, FlashBackError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}


@dataclass
class Document:
    title: str
    text: str


def _heading(text: str) -> str | None:
    lines = text.splitlines()
    for i, line in enumerate(lines[:40]):
        md = re.match(r"^#{1,3}\s+(.+?)\s*#*\s*$", line)
        if md:
            return md.group(1).strip()
        # reST: a line underlined (and maybe overlined) with = - ~ * # characters
        if i + 1 < len(lines) and line.strip() and re.fullmatch(r"([=\-~*#^])\1{2,}", lines[i + 1].strip()) \
                and len(lines[i + 1].strip()) >= len(line.strip()):
            return line.strip()
    return None


def read_text_file(path: Path) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace")
    return Document(title=_heading(text) or path.stem, text=text)


def read_jsonl_file(path: Path) -> Iterator[Document]:
    from .io_utils import iter_text_lines

    # One line at a time: a large corpus file is never held whole.
    for number, line in iter_text_lines(path, "corpus file"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise FlashBackError(f"{path} line {number} is not valid JSON: {err}") from None
        if not isinstance(record, dict):
            raise FlashBackError(f"{path} line {number}: expected an object with a 'text' field")
        text = record.get("text", record.get("contents"))
        if not isinstance(text, str):
            raise FlashBackError(f"{path} line {number}: no 'text' (or 'contents') string field")
        yield Document(title=str(record.get("title") or ""), text=text)


def _is_index_folder(folder: Path) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return '"flashback-index"' in manifest.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False


def corpus_files(root: Path) -> list[Path]:
    """The text and JSONL files below ``root``, sorted; index folders and hidden entries are skipped.

    An index built inside its own input folder (or one being built there: a hidden temporary
    folder) must not be read back as corpus on the next build, and ``.git`` and the like are not text.
    """
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_index_folder(Path(folder) / d)]
        found += [Path(folder) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES]
    return sorted(found)


def read_documents(source: str | Path) -> Iterator[Document]:
    """Documents from a file or a folder (recursively); see the module docstring for the formats."""
    spec = str(source)
    if spec.startswith("hf:"):
        from .hf_corpus import read_hf_documents   # optional: needs the datasets package

        yield from read_hf_documents(spec)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise FlashBackError(f"no such file or folder: {path}")
    from .hf_corpus import is_saved_dataset   # a save_to_disk folder holds .arrow files, not text

    if is_saved_dataset(path):
        from .hf_corpus import read_hf_documents

        yield from read_hf_documents(f"hf:{path}")
        return
    if path.is_dir():
        files = corpus_files(path)
        if not files:
            raise EmptyCorpusError(f"{path} holds no .txt, .md, .rst or .jsonl files")
    else:
        files = [path]
    for file in files:
        suffix = file.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from read_jsonl_file(file)
        elif suffix in TEXT_SUFFIXES or path.is_file():
            yield read_text_file(file)


# Characters tokenised at once. A fast tokenizer keeps offsets and more per token, so one call on a
# 50 MB single-line document took 9.75 GB and 219 s; pieces of 64 K characters keep it bounded.
SEGMENT_CHARS = 1 << 16


def text_segments(text: str, size: int = SEGMENT_CHARS) -> Iterator[str]:
    """Consecutive pieces of ``text`` of at most ``size`` characters, cut just before whitespace where
    the piece has any (so a word is not split and the space stays with the word that follows it)."""
    start = 0
    while len(text) - start > size:
        end = start + size
        cut = max(text.rfind(ws, start + 1, end) for ws in (" ", "\n", "\t"))
        cut = cut if cut > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_long(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` (no special tokens), tokenised a segment at a time: the tokenizer's own
    per-token bookkeeping stays bounded however long the text (only the ids are kept)."""
    ids: list[int] = []
    for segment in text_segments(text):
        ids += tokenizer(segment, add_special_tokens=False, verbose=False).input_ids
    return ids


def iter_chunk_text(text: str, tokenizer: Any, chunk_tokens: int) -> Iterator[str]:
    """Consecutive windows of ``chunk_tokens`` tokens of ``text`` (the last may be shorter), in bounded
    memory: the text is tokenised a segment at a time and only one window of ids is held.

    ``tokenizer=None`` splits on whitespace instead (words as tokens).
    """
    if chunk_tokens <= 0:
        raise FlashBackError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if tokenizer is None:
        words = text.split()
        for i in range(0, len(words), chunk_tokens):
            yield " ".join(words[i:i + chunk_tokens])
        return
    pending: list[int] = []
    for segment in text_segments(text):
        pending += tokenizer(segment, add_special_tokens=False, verbose=False).input_ids
        while len(pending) >= chunk_tokens:
            yield tokenizer.decode(pending[:chunk_tokens], skip_special_tokens=True)
            del pending[:chunk_tokens]
    if pending:
        yield tokenizer.decode(pending, skip_special_tokens=True)


def chunk_text(text: str, tokenizer: Any, chunk_tokens: int) -> list[str]:
    """All of :func:`iter_chunk_text` as a list."""
    return list(iter_chunk_text(text, tokenizer, chunk_tokens))


def chunk_documents(documents: Iterable[Document], tokenizer: Any, chunk_tokens: int = 128
                    ) -> Iterator[dict[str, Any]]:
    """Chunk records ``{"id", "title", "contents"}`` with ids "0", "1", ... in corpus order."""
    count = 0
    for doc in documents:
        for piece in iter_chunk_text(doc.text, tokenizer, chunk_tokens):
            if piece.strip():
                yield {"id": str(count), "title": doc.title, "contents": piece}
                count += 1
