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
from ..io_utils import atomic_open, atomic_write_json, iter_text_lines, read_text, recover_directory

CHUNKS_FILE = "chunks.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "flashback-index"
FORMAT_VERSION = 1


def write_chunks(path: Path, chunks: Iterable[dict[str, Any]]) -> int:
    """Stream chunks to a JSONL file; return how many were written."""
    count = 0
    with atomic_open(path) as handle:
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
    for number, line in iter_text_lines(path, "index file"):
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
            if not isinstance(chunk, dict) or "id" not in chunk or "contents" not in chunk:
                raise ValueError("needs id and contents")
            if not isinstance(chunk["contents"], str) or not isinstance(chunk.get("title", ""), (str, type(None))):
                raise ValueError("contents and title must be strings")
        except ValueError as err:
            raise IndexFormatError(f"{path} line {number} is not a chunk record: {err}") from None
        yield chunk


def check_fields(where: str | Path, record: dict[str, Any], types: dict[str, Any], optional: bool = False) -> None:
    """Each named field has its type (``int`` excludes booleans; ``None`` allowed when ``optional``).

    A manifest is data anyone can edit: a wrong type must give one clear error, never a traceback
    deep in a back-end.
    """
    for name, kind in types.items():
        if name not in record:
            if optional:
                continue
            raise IndexFormatError(f"{where}: the field '{name}' is missing")
        value = record[name]
        if value is None and optional:
            continue
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            want = getattr(kind, "__name__", None) or " or ".join(k.__name__ for k in kind)
            raise IndexFormatError(f"{where}: '{name}' must be {want}, got {value!r}")


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
        recover_directory(directory)        # a build killed mid-swap: finish or roll it back
    if not directory.is_dir():
        raise IndexFormatError(f"no index folder at {directory}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise IndexFormatError(f"{directory} is not a flashback index (no {MANIFEST_FILE}); "
                               "build one with `flashback index build`")
    try:
        manifest = json.loads(read_text(path, "index manifest"))
    except ValueError as err:
        raise IndexFormatError(f"{path} is corrupt: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or "backend" not in manifest:
        raise IndexFormatError(f"{path} is not a flashback index manifest")
    check_fields(path, manifest, {"version": int, "backend": str, "num_chunks": int})
    if manifest["version"] > FORMAT_VERSION:
        raise IndexFormatError(f"{directory} was written by a newer flashback-rag "
                               f"(format {manifest['version']}); upgrade to read it")
    if manifest["version"] < 1 or manifest["num_chunks"] < 0:
        raise IndexFormatError(f"{path}: 'version' must be >= 1 and 'num_chunks' >= 0")
    for name in ("chunking", "bm25", "dense", "lucene"):
        if name in manifest and not isinstance(manifest[name], dict):
            raise IndexFormatError(f"{path}: '{name}' must be an object, got {type(manifest[name]).__name__}")
    if backend is not None and manifest["backend"] != backend:
        raise IndexFormatError(f"{directory} is a {manifest['backend']!r} index, not {backend!r}")
    return manifest
