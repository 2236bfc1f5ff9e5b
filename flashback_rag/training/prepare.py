"""``flashback prepare``: a corpus and a retriever in, training / validation examples out.

For every retrieval point ``i`` (every ``stride`` tokens of a split's token stream, from ``min_context``
on) the query is the last ``query_tokens`` tokens, the retriever returns ``top_k`` passages (forbidden
titles skipped by the retriever), each truncated to ``doc_tokens``, and the example is

    {"passages": [[...], ...], "src": tokens[i - n:i], "tgt": tokens[i:i + stride], "point": i}

with ``n`` chosen so that ``src + [MARK_L] + passages + [MARK_R] + tgt`` fits ``max_positions`` (the two
markers are always counted, so one prepared set serves every pattern, with or without markers):

- ``construction="default"``: the layout fills ``max_positions`` exactly;
- ``construction="random"`` (the seed's default for training): the retrieval point lands at a random
  position ``c`` in ``[max_positions // 2, max_positions - stride - 1]``, i.e. src + block = ``c``, so
  examples vary in length like the positions seen at inference.

    >>> import tempfile
    >>> from flashback_rag.models import load_model
    >>> from flashback_rag.retrievers import BM25Retriever
    >>> _, tok = load_model("tiny-random-llama")
    >>> r = BM25Retriever.build(["cats purr and sleep all day", "dogs bark at the moon"])
    >>> cfg = PrepareConfig(stride=8, query_tokens=16, doc_tokens=12, max_positions=64)
    >>> ex = make_examples(tok(("dogs and cats " * 20)).input_ids, r, tok, cfg, "train")
    >>> all(len(e["src"]) + 2 + sum(map(len, e["passages"])) + len(e["tgt"]) <= 64 for e in ex)
    True

Packed training and evaluation (``training/packing.py``) read *windows* instead: the token stream cut
into windows of ``max_positions - max_block`` tokens (so every segment of a packed window stays under
``max_positions``), each with its retrieval points (every ``stride`` tokens from ``min_prefix`` on) and
their passages. Consecutive windows overlap by ``min_prefix`` tokens, so every token after the first
``min_prefix`` of the stream is a target exactly once:

    {"start": a, "tokens": tokens[a:a + L], "points": [i - a, ...], "passages": [[[...]], ...], "stride": s}

    >>> cfg = PrepareConfig(stride=8, query_tokens=16, doc_tokens=12, max_positions=64, min_prefix=8)
    >>> [(start, points) for start, points in window_points(100, cfg)]
    [(0, [8, 16, 24, 32, 40]), (40, [8, 16, 24, 32, 40]), (80, [8])]

On disk (``out/``): ``args.json`` (the settings, tokenizer and sources: re-running with the same
arguments resumes, other arguments are refused), ``train/00000.jsonl ...`` and ``validation/...``
shards of examples, and ``train/windows/00000.jsonl ...`` shards of windows, each written atomically
(an interrupted run redoes at most one shard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters import tokenizer_fingerprint  # noqa: F401  (one definition; prepared data records it)
from ..config import MARK_L, MARK_R
from ..corpus import Document, read_documents
from ..errors import ConfigError, FlashBackError
from ..io_utils import atomic_write_json, atomic_write_text
from ..patterns import encode_passage
from ..retrievers.base import Retriever, retrieve_batch

CONSTRUCTIONS = ("random", "default")
FORMAT = "flashback-prepared"
FORMAT_VERSION = 2          # 2: windows for packed training beside the per-point examples


@dataclass
class PrepareConfig:
    """How examples are cut from a token stream (names follow FlashBackConfig where they overlap)."""

    stride: int = 16
    query_tokens: int = 32
    doc_tokens: int = 128
    top_k: int = 1
    max_positions: int = 512
    construction: str = "random"
    min_context: int | None = None        # first retrieval point; default max_positions - stride
    every: int = 1                        # keep one retrieval point in `every` (spreads a small budget)
    echo_tokens: int = 0                  # room kept for an echo of up to this many tokens
    min_prefix: int | None = None         # windows: tokens before a window's first point (default L // 4)
    seed: int = 42
    passage_template: str = "{title}\n{text}"
    shard_size: int = 256

    def __post_init__(self) -> None:
        for name in ("stride", "query_tokens", "doc_tokens", "top_k", "max_positions", "every", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.echo_tokens, bool) or not isinstance(self.echo_tokens, int) or self.echo_tokens < 0:
            raise ConfigError(f"echo_tokens must be a non-negative integer, got {self.echo_tokens!r}")
        if self.construction not in CONSTRUCTIONS:
            raise ConfigError(f"unknown construction {self.construction!r}; choose one of {', '.join(CONSTRUCTIONS)}")
        if self.max_positions - self.stride - self.max_block < 1:
            raise ConfigError(
                f"a block of up to {self.max_block} tokens (top_k x doc_tokens + 2 markers) and a stride of "
                f"{self.stride} leave no room for src in max_positions={self.max_positions}; "
                "lower doc_tokens or top_k")
        if self.min_context is not None and self.min_context < 1:
            raise ConfigError(f"min_context must be positive, got {self.min_context}")
        if self.min_prefix is not None and not 1 <= self.min_prefix <= self.window_length - self.stride:
            raise ConfigError(f"min_prefix must be in [1, {self.window_length - self.stride}] (a window holds "
                              f"{self.window_length} tokens), got {self.min_prefix}")

    @property
    def max_block(self) -> int:
        """Largest block: top_k passages, the two markers, and the echo room."""
        return self.top_k * self.doc_tokens + 2 + self.echo_tokens

    @property
    def window_length(self) -> int:
        """Tokens of one window: its last segment then ends inside max_positions."""
        return self.max_positions - self.max_block

    @property
    def window_prefix(self) -> int:
        return self.min_prefix if self.min_prefix is not None else max(1, self.window_length // 4)

    @property
    def first_point(self) -> int:
        return self.min_context if self.min_context is not None else self.max_positions - self.stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def token_stream(documents: Iterable[Document], tokenizer, separator: str = "\n\n") -> list[int]:
    """All documents as one token stream (the seed joins a split's text the same way)."""
    sep = tokenizer(separator, add_special_tokens=False).input_ids if separator else []
    out: list[int] = []
    for doc in documents:
        if not doc.text.strip():
            continue
        if out:
            out.extend(sep)
        out.extend(tokenizer(doc.text, add_special_tokens=False, verbose=False).input_ids)
    return out


def retrieval_points(n_tokens: int, cfg: PrepareConfig) -> list[int]:
    """Retrieval points with a full stride of target after them."""
    return list(range(cfg.first_point, n_tokens - cfg.stride + 1, cfg.stride))[::cfg.every]


def window_points(n_tokens: int, cfg: PrepareConfig) -> list[tuple[int, list[int]]]:
    """``(start, points)`` per window: points are offsets with a full stride after them (thinned by every)."""
    length, prefix = cfg.window_length, cfg.window_prefix
    out, start = [], 0
    while start + prefix + cfg.stride <= n_tokens:
        end = min(start + length, n_tokens)
        offsets = list(range(prefix, end - start - cfg.stride + 1, cfg.stride))
        out.append((start, offsets[::cfg.every]))
        start += offsets[-1] + cfg.stride - prefix        # the next window's first target follows on
    return out


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """At most ``count`` of ``items``, evenly spread over them (a cap that still samples every part)."""
    if count is None or count >= len(items):
        return list(items)
    if count <= 0:
        return []
    step = len(items) / count
    return [items[int(k * step)] for k in range(count)]


def make_windows(tokens: Sequence[int], retriever: Retriever, tokenizer, cfg: PrepareConfig,
                 windows: Sequence[tuple[int, list[int]]]) -> list[dict[str, Any]]:
    """Window records (see the module docstring), retrieving for all their points in one batch.

    The query of a point is the last ``query_tokens`` tokens before it *inside its window*: what the
    equivalent separate example (``src = window[:i]``) would query with.
    """
    from ..decoding import as_passage

    flat = [(w, start, at) for w, (start, points) in enumerate(windows) for at in points]
    queries = [tokenizer.decode(tokens[max(start, start + at - cfg.query_tokens):start + at], skip_special_tokens=True)
               for _, start, at in flat]
    hits = retrieve_batch(retriever, queries, cfg.top_k)
    records = [{"start": start, "tokens": list(tokens[start:start + cfg.window_length]), "points": list(points),
                "passages": [], "passage_ids": [], "stride": cfg.stride} for start, points in windows]
    for (w, _, _), found in zip(flat, hits):
        chosen = [as_passage(p, r) for r, p in enumerate(itertools.islice(found, cfg.top_k))]
        encoded = [encode_passage(tokenizer, p, cfg.doc_tokens, cfg.passage_template) for p in chosen]
        records[w]["passages"].append([e for e in encoded if e])
        records[w]["passage_ids"].append([str(p.id) for p in chosen])
    return records


def read_windows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Window records of one split (``SPLIT/windows/*.jsonl``, or a ``.jsonl`` file)."""
    path = Path(path)
    folder = path / "windows" if (path / "windows").is_dir() else path
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else [folder]
    if not files or not all(f.is_file() for f in files):
        raise FlashBackError(f"no prepared windows at {path}: prepare the data again with this version of "
                             "`flashback prepare`, or train with --no-pack")
    from .data import read_jsonl_records

    return read_jsonl_records(files, limit)


def src_length(point: int, block_len: int, cfg: PrepareConfig, split: str) -> int:
    """How many tokens before ``point`` the example keeps (see the module docstring)."""
    # block_len counts the two markers, so the bound holds for every pattern, markers on or off.
    limit = cfg.max_positions - cfg.stride - block_len          # "default": fill max_positions exactly
    if cfg.construction == "default":
        n = limit
    else:
        # One generator per (seed, split, point): the same example on a resumed or re-ordered run.
        rng = random.Random(f"{cfg.seed}:{split}:{point}")
        center = rng.randint(cfg.max_positions // 2, cfg.max_positions - cfg.stride - 1)
        n = min(limit, center - block_len)
    return max(1, min(n, point))


def make_examples(tokens: Sequence[int], retriever: Retriever, tokenizer, cfg: PrepareConfig, split: str,
                  points: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Examples for ``points`` (default: all retrieval points of ``tokens``), retrieving in one batch."""
    from ..decoding import as_passage

    points = retrieval_points(len(tokens), cfg) if points is None else points
    queries = [tokenizer.decode(tokens[max(0, i - cfg.query_tokens):i], skip_special_tokens=True) for i in points]
    hits = retrieve_batch(retriever, queries, cfg.top_k)
    examples = []
    for i, query, found in zip(points, queries, hits):
        found = list(itertools.islice(found, cfg.top_k))     # a retriever may yield without end
        passages = [encode_passage(tokenizer, as_passage(p, r), cfg.doc_tokens, cfg.passage_template)
                    for r, p in enumerate(found)]
        passages = [p for p in passages if p]
        block_len = sum(map(len, passages)) + 2
        n = src_length(i, block_len, cfg, split)
        examples.append({"passages": passages, "src": list(tokens[i - n:i]), "tgt": list(tokens[i:i + cfg.stride]),
                         "point": i, "passage_ids": [str(as_passage(p, r).id) for r, p in enumerate(found)][:cfg.top_k]})
    return examples


def split_documents(documents: list[Document], fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """(train, validation): each document goes to validation with probability ``fraction`` (seeded)."""
    train, val = [], []
    for i, doc in enumerate(documents):
        key = hashlib.sha1(f"{seed}:{i}:{doc.title}".encode("utf-8")).digest()
        (val if key[0] / 256 < fraction else train).append(doc)
    return train, val


def prepare(sources: dict[str, str | Path | list[Document]], retriever: Retriever, tokenizer, out: str | Path,
            cfg: PrepareConfig, record: dict[str, Any] | None = None,
            max_examples: dict[str, int | None] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Prepare every split of ``sources`` (split name -> file / folder / documents) into ``out``.

    Returns the ``args.json`` record with the number of examples per split.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    args = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(),
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(set(tokenizer.get_vocab()) - {MARK_L, MARK_R}),
                          "name": getattr(tokenizer, "name_or_path", "")},
            "sources": {k: (v if isinstance(v, (str, Path)) else f"<{len(v)} documents>") for k, v in sources.items()},
            "max_examples": max_examples or {}, **(record or {})}
    args = json.loads(json.dumps(args, default=str))
    args_path = out / "args.json"
    if args_path.is_file():
        old = json.loads(args_path.read_text(encoding="utf-8"))
        comparable = {k: v for k, v in old.items() if k != "counts"}
        if comparable != args:
            raise FlashBackError(f"{out} holds examples prepared with other arguments; use another --out "
                                 "or delete it")
    else:
        atomic_write_json(args_path, args)

    counts = {}
    for split, source in sources.items():
        docs = source if isinstance(source, list) else list(read_documents(source))
        tokens = token_stream(docs, tokenizer)
        points = retrieval_points(len(tokens), cfg)
        limit = (max_examples or {}).get(split)
        if limit is not None:
            points = points[:limit]
        if not points:
            raise FlashBackError(f"split {split!r} has {len(tokens)} tokens: too short for one example "
                                 f"(the first retrieval point is at {cfg.first_point})")
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        shards = [points[s:s + cfg.shard_size] for s in range(0, len(points), cfg.shard_size)]
        bar = tqdm(total=len(points), desc=f"prepare {split}", unit=" ex", disable=not show_progress)
        for number, shard in enumerate(shards):
            path = folder / f"{number:05d}.jsonl"
            if not path.is_file():      # finished shards are skipped: re-running resumes
                examples = make_examples(tokens, retriever, tokenizer, cfg, split, shard)
                atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in examples))
            bar.update(len(shard))
        bar.close()
        counts[split] = len(points)
        # Windows for packed training: the same point budget, spread over the whole split.
        windows = window_points(len(tokens), cfg)
        if limit is not None:
            per_window = max(1, round(sum(len(p) for _, p in windows) / max(1, len(windows))))
            windows = spread(windows, max(1, -(-limit // per_window)))
        wfolder = folder / "windows"
        wfolder.mkdir(parents=True, exist_ok=True)
        per_shard = max(1, cfg.shard_size // max(1, len(windows[0][1]) if windows else 1))
        for number, begin in enumerate(range(0, len(windows), per_shard)):
            path = wfolder / f"{number:05d}.jsonl"
            if not path.is_file():
                records = make_windows(tokens, retriever, tokenizer, cfg, windows[begin:begin + per_shard])
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        counts[f"{split}_windows"] = len(windows)
        counts[f"{split}_window_points"] = sum(len(p) for _, p in windows)
    args["counts"] = counts
    atomic_write_json(args_path, args)
    return args


def read_prepared_args(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "args.json"
    if not path.is_file():
        raise FlashBackError(f"{directory} is not a prepared data folder (no args.json); run `flashback prepare`")
    return json.loads(path.read_text(encoding="utf-8"))
