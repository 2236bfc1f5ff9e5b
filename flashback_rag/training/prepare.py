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

On disk (``out/``): ``args.json`` (the settings, tokenizer and sources: re-running with the same
arguments resumes, other arguments are refused), ``train/00000.jsonl ...`` and ``validation/...``
shards written atomically one by one (an interrupted run redoes at most one shard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MARK_L, MARK_R
from ..corpus import Document, read_documents
from ..errors import ConfigError, FlashBackError
from ..io_utils import atomic_write_json, atomic_write_text
from ..patterns import encode_passage
from ..retrievers.base import Retriever, retrieve_batch

CONSTRUCTIONS = ("random", "default")
FORMAT = "flashback-prepared"
FORMAT_VERSION = 1


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
    seed: int = 42
    passage_template: str = "{title}\n{text}"
    shard_size: int = 256

    def __post_init__(self) -> None:
        for name in ("stride", "query_tokens", "doc_tokens", "top_k", "max_positions", "every", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.construction not in CONSTRUCTIONS:
            raise ConfigError(f"unknown construction {self.construction!r}; choose one of {', '.join(CONSTRUCTIONS)}")
        if self.max_positions - self.stride - self.max_block < 1:
            raise ConfigError(
                f"a block of up to {self.max_block} tokens (top_k x doc_tokens + 2 markers) and a stride of "
                f"{self.stride} leave no room for src in max_positions={self.max_positions}; "
                "lower doc_tokens or top_k")
        if self.min_context is not None and self.min_context < 1:
            raise ConfigError(f"min_context must be positive, got {self.min_context}")

    @property
    def max_block(self) -> int:
        return self.top_k * self.doc_tokens + 2

    @property
    def first_point(self) -> int:
        return self.min_context if self.min_context is not None else self.max_positions - self.stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary (marker tokens left out), to tell tokenizers apart."""
    vocab = {tok: i for tok, i in tokenizer.get_vocab().items() if tok not in (MARK_L, MARK_R)}
    blob = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")
    return hashlib.sha1(blob).hexdigest()[:16]


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
        passages = [encode_passage(tokenizer, as_passage(p, r), cfg.doc_tokens, cfg.passage_template)
                    for r, p in enumerate(list(found)[:cfg.top_k])]
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
    args["counts"] = counts
    atomic_write_json(args_path, args)
    return args


def read_prepared_args(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "args.json"
    if not path.is_file():
        raise FlashBackError(f"{directory} is not a prepared data folder (no args.json); run `flashback prepare`")
    return json.loads(path.read_text(encoding="utf-8"))
