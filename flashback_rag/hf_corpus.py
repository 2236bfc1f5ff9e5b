"""Hugging Face datasets as corpora: ``hf:NAME[:CONFIG[:SPLIT]]`` or a ``save_to_disk`` folder, streamed.

    >>> from flashback_rag.hf_corpus import parse_hf_spec
    >>> parse_hf_spec("hf:wikitext:wikitext-103-raw-v1:test")
    HFSpec(name='wikitext', config='wikitext-103-raw-v1', split='test', path=None)

Hub datasets are opened with ``streaming=True`` (nothing is downloaded in full); saved folders
(``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, given as ``hf:FOLDER[:SPLIT]`` or as a plain
folder path) are memory-mapped. Rows become :class:`~flashback_rag.corpus.Document` objects:

- with a ``title`` column: one document per row, text from ``text`` (or ``contents``, or the first
  string column);
- WikiText layout (one line per row, articles opened by a `` = Title = `` line): the rows are joined
  into one document per article, titled with that heading, so evaluation can forbid the article's
  own title; section headings (`` = = Section = = ``) stay in the text;
- otherwise one untitled document per non-empty row.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import Document
from .errors import FlashBackError, MissingDependencyError

# " = Valkyria Chronicles III = \n": one "=" each side (sections have "= =").
WIKITEXT_TITLE = re.compile(r"^ = ([^=].*?) = ?\n?$")
SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_PEEK_ROWS = 256


@dataclass
class HFSpec:
    name: str | None
    config: str | None
    split: str | None
    path: str | None        # a save_to_disk folder instead of a hub name


def is_saved_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk``."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS[:2])


def parse_hf_spec(spec: str) -> HFSpec:
    """``hf:NAME[:CONFIG[:SPLIT]]``, ``hf:FOLDER[:SPLIT]`` or a saved folder's path."""
    rest = spec[3:] if spec.startswith("hf:") else spec
    if not rest:
        raise FlashBackError("empty dataset spec: use hf:NAME[:CONFIG[:SPLIT]] or hf:FOLDER[:SPLIT]")
    if Path(rest).expanduser().is_dir():
        return HFSpec(None, None, None, str(Path(rest).expanduser()))
    head, _, tail = rest.rpartition(":")
    if head and Path(head).expanduser().is_dir():
        return HFSpec(None, None, tail or None, str(Path(head).expanduser()))
    parts = rest.split(":")
    if len(parts) > 3 or not parts[0]:
        raise FlashBackError(f"cannot read dataset spec {spec!r}: use hf:NAME[:CONFIG[:SPLIT]]")
    parts += [""] * (3 - len(parts))
    return HFSpec(parts[0], parts[1] or None, parts[2] or None, None)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("Hugging Face corpora need the datasets package: "
                                     "pip install 'flashback-rag[datasets]'") from None
    return datasets


def open_rows(spec: HFSpec) -> Iterable[dict[str, Any]]:
    """The rows of the dataset ``spec`` names (a streamed or memory-mapped iterable)."""
    datasets = _datasets()
    if spec.path is not None:
        try:
            data = datasets.load_from_disk(spec.path)
        except (FileNotFoundError, ValueError) as err:
            raise FlashBackError(f"{spec.path} is not a saved dataset: {err}") from None
        if isinstance(data, datasets.DatasetDict):
            split = spec.split or ("train" if "train" in data else next(iter(data), None))
            if split not in data:
                raise FlashBackError(f"{spec.path} has no split {split!r} (it has: {', '.join(data)})")
            data = data[split]
        return data
    try:
        return datasets.load_dataset(spec.name, spec.config, split=spec.split or "train", streaming=True)
    except Exception as err:      # hub, network and config errors all mean: cannot open it
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FlashBackError(f"cannot open dataset {spec.name!r} (config {spec.config}, split "
                             f"{spec.split or 'train'}): {first}") from None


def _text_column(row: dict[str, Any]) -> str:
    for name in ("text", "contents"):
        if isinstance(row.get(name), str):
            return name
    for name, value in row.items():
        if isinstance(value, str) and name != "title":
            return name
    raise FlashBackError(f"the dataset has no text column (columns: {', '.join(row)})")


def wikitext_documents(lines: Iterable[str]) -> Iterator[Document]:
    """Join WikiText lines into articles titled by their `` = Title = `` heading."""
    title, body = "", []
    for line in lines:
        match = WIKITEXT_TITLE.match(line)
        if match:
            if "".join(body).strip():
                yield Document(title=title, text="".join(body).strip("\n"))
            title, body = match.group(1).strip(), []
        else:
            body.append(line)
    if "".join(body).strip():
        yield Document(title=title, text="".join(body).strip("\n"))


def rows_to_documents(rows: Iterable[dict[str, Any]]) -> Iterator[Document]:
    """Documents from dataset rows; the layout is chosen from the first rows (see the module doc)."""
    rows = iter(rows)
    head = list(itertools.islice(rows, _PEEK_ROWS))
    if not head:
        return
    column = _text_column(head[0])
    all_rows = itertools.chain(head, rows)
    if "title" in head[0]:
        for row in all_rows:
            if str(row[column] or "").strip():
                yield Document(title=str(row.get("title") or ""), text=row[column])
    elif any(WIKITEXT_TITLE.match(row[column] or "") for row in head):
        yield from wikitext_documents(row[column] or "" for row in all_rows)
    else:
        for row in all_rows:
            if str(row[column] or "").strip():
                yield Document(title="", text=row[column])


def read_hf_documents(spec: str) -> Iterator[Document]:
    """Documents of ``hf:NAME[:CONFIG[:SPLIT]]``, ``hf:FOLDER[:SPLIT]`` or a saved folder, streamed."""
    yield from rows_to_documents(open_rows(parse_hf_spec(spec)))
