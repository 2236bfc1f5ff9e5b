"""The Python 3.11 documentation sources (reST) as a corpus, split three ways for training and evaluation.

    >>> from flashback_rag.corpus import Document
    >>> parts = split_three_ways([Document(title=f"doc{i}", text="x") for i in range(100)], seed=42)
    >>> sorted(parts), sum(map(len, parts.values()))
    (['index', 'train', 'validation'], 100)

The sources come from Debian's ``python3.11-doc`` package (``apt-get download`` + ``dpkg-deb -x``, no root
needed); on a machine without apt, the standard library's own docs (``stdlib_corpus``) stand in. The
quality benchmark and the recipe of the shipped FlashBack model both read their documents here, so the
two see the same split: documents go to *index*, *train* or *validation* by a seeded hash of their title.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .corpus import Document

DEBIAN_PACKAGE = "python3.11-doc"
SOURCES = Path("usr/share/doc/python3.11/html/_sources")


def _install(extracted: Path, target: Path) -> None:
    """Rename a complete extraction into place; if another process got there first, keep its copy (a rename
    is atomic, so an existing target is complete)."""
    try:
        os.replace(extracted, target)
    except OSError:
        if not target.is_dir():
            raise


def python_docs(work: Path, min_chars: int = 2000) -> tuple[list[Document], str]:
    """The reST documents (titled by their path, at least ``min_chars`` long) and the corpus's name."""
    work = Path(work)
    target = work / DEBIAN_PACKAGE
    sources = target / SOURCES
    if not sources.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, check=True,
                               capture_output=True, timeout=300)
                deb = next(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
                # A folder of this process's own: two processes fetching into one work folder at once used
                # to share one ".partial" folder, and one of them renamed it while the other was still
                # writing, leaving a corpus with files missing (a benchmark run on a third of the docs).
                work.mkdir(parents=True, exist_ok=True)
                part = Path(tempfile.mkdtemp(prefix=f".{DEBIAN_PACKAGE}.", dir=work))
                try:
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(part)], check=True, timeout=300)
                    _install(part, target)
                finally:
                    shutil.rmtree(part, ignore_errors=True)
            except (OSError, subprocess.SubprocessError, StopIteration) as err:
                print(f"flashback: {DEBIAN_PACKAGE} unavailable ({err}); using the stdlib docs", file=sys.stderr)
    if sources.is_dir():
        docs = [Document(title=str(p.relative_to(sources)).removesuffix(".rst.txt"),
                         text=p.read_text(encoding="utf-8", errors="replace"))
                for p in sorted(sources.rglob("*.rst.txt"))]
        return [d for d in docs if len(d.text) > min_chars], f"Debian {DEBIAN_PACKAGE} reST sources"
    from .stdlib_corpus import stdlib_documents

    return stdlib_documents(), "Python stdlib docs (pydoc topics + module docstrings)"


def split_three_ways(docs: list[Document], seed: int, train_share: float = 0.3,
                     val_share: float = 0.1) -> dict[str, list[Document]]:
    """Index / train / validation documents by a seeded hash of the title (disjoint by construction)."""
    parts: dict[str, list[Document]] = {"index": [], "train": [], "validation": []}
    for doc in docs:
        u = int(hashlib.sha1(f"{seed}:{doc.title}".encode()).hexdigest()[:8], 16) / 2**32
        key = "validation" if u < val_share else "train" if u < val_share + train_share else "index"
        parts[key].append(doc)
    return parts
