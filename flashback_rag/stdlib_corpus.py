"""A real corpus on every machine with Python: the standard library's own documentation.

    >>> from flashback_rag.stdlib_corpus import stdlib_documents
    >>> docs = stdlib_documents()
    >>> len(docs) > 100 and any(d.title == "with" for d in docs)
    True

Two sources, both offline: the pydoc topics (``pydoc_data.topics``: the language reference sections
that ``help("with")`` shows) and the docstrings of the standard-library modules, read from their
source files with ``ast`` (never imported, so nothing runs).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from .corpus import Document


def pydoc_topic_documents() -> list[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:      # some distributions strip pydoc_data
        return []
    return [Document(title=name, text=text) for name, text in sorted(topics.items()) if text.strip()]


def module_docstring_documents(min_chars: int = 200) -> list[Document]:
    docs = []
    for name in sorted(getattr(sys, "stdlib_module_names", ())):
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "test"}:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = spec.origin if spec else None
        if not origin or not origin.endswith(".py"):
            continue
        try:
            tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        text = ast.get_docstring(tree) or ""
        if len(text) >= min_chars:
            docs.append(Document(title=f"{name} module", text=text))
    return docs


def stdlib_documents() -> list[Document]:
    """pydoc topics, then module docstrings."""
    return pydoc_topic_documents() + module_docstring_documents()
