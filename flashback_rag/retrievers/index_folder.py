"""The index folder every back-end shares: ``chunks.jsonl`` + ``manifest.json`` + the back-end's files.

``chunks.jsonl`` holds one ``{"id", "title", "contents"}`` object a line (pyserini's JsonCollection
format), so any back-end can be built from the same file. ``manifest.json`` records the back-end, the
chunking and the tokenizer, so loading needs nothing but the path.

    >>> import tempfile, pathlib
    >>> from flashback_rag.retrievers.index_folder import write_chunks, iter_chunks
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_chunks(d / "chunks.jsonl", [{"id": "0", "title": "T", "contents": "text"}])
    1
    >>> next(iter_chunks(d / "chunks.jsonl"))["contents"]
    'text'
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import IndexFormatError
from ..io_utils import atomic_write_json

CHUNKS_FILE = "chunks.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "flashback-index"
FORMAT_VERSION = 1


def write_chunks(path: Path, chunks: Iterable[dict[str, Any]]) -> int:
    """Stream chunks to a JSONL file; return how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for chunk in chunks:
            handle.write(json.dumps({"id": str(chunk["id"]), "title": chunk.get("title", "") or "",
                                     "contents": chunk["contents"]}, ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_chunks(path: Path) -> Iterator[dict[str, Any]]:
    """Stream the chunks of a JSONL file, checking each line."""
    path = Path(path)
    if not path.is_file():
        raise IndexFormatError(f"index is missing its {path.name}: {path}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                chunk = json.loads(line)
                if not isinstance(chunk, dict) or "id" not in chunk or "contents" not in chunk:
                    raise ValueError("needs id and contents")
            except ValueError as err:
                raise IndexFormatError(f"{path} line {number} is not a chunk record: {err}") from None
            yield chunk


def write_manifest(directory: Path, backend: str, num_chunks: int, **extra: Any) -> dict[str, Any]:
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "backend": backend,
        "num_chunks": num_chunks,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    atomic_write_json(Path(directory) / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(directory: str | Path, backend: str | None = None) -> dict[str, Any]:
    """The manifest of an index folder, with one clear error for each way it can be wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"no index folder at {directory}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise IndexFormatError(f"{directory} is not a flashback index (no {MANIFEST_FILE}); "
                               "build one with `flashback index build`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"{path} is corrupt: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or "backend" not in manifest:
        raise IndexFormatError(f"{path} is not a flashback index manifest")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise IndexFormatError(f"{directory} was written by a newer flashback-rag "
                               f"(format {manifest['version']}); upgrade to read it")
    if backend is not None and manifest["backend"] != backend:
        raise IndexFormatError(f"{directory} is a {manifest['backend']!r} index, not {backend!r}")
    return manifest
