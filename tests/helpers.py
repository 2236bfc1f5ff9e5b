"""Shared test helpers: a deterministic retriever that always returns passages.

BM25 over random-model output rarely matches anything, so parity tests use this retriever: it picks
passages by a hash of the query, so the passage changes as the text changes (exercising the crop path)
and repeats sometimes (exercising reuse), deterministically across the cached and reference runs.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

from flashback_rag.retrievers import Passage

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Python language-reference sections: a small real corpus that exists wherever Python does
# (the pydoc_topics_jsonl fixture writes them as a JSONL corpus file).
PYDOC_TOPICS = ["with", "for", "assert", "lambda", "del", "global", "while", "class"]

TEXTS = [
    "Paris is the capital and largest city of France, on the river Seine.",
    "Rome is the capital of Italy; its historic centre holds many churches and ruins.",
    "Cats are small carnivorous mammals that like fish, warm places and long naps.",
    "The with statement wraps a block in methods defined by a context manager.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]


def assert_same_generation(cached, reference) -> None:
    """A cached generation equals its reference (recomputed) run: tokens, every step's logits (fp32
    tolerance, the same banned entries), passages, kept blocks and window slides."""
    import torch

    assert cached.token_ids == reference.token_ids
    assert len(cached.scores) == len(reference.scores) == len(cached.token_ids)
    for a, b in zip(cached.scores, reference.scores):
        finite = torch.isfinite(b)
        assert torch.equal(finite, torch.isfinite(a))
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-4, atol=1e-4)
    assert [r.passage_ids for r in cached.retrievals] == [r.passage_ids for r in reference.retrievals]
    assert [r.kept for r in cached.retrievals] == [r.kept for r in reference.retrievals]
    assert [s.window_start for s in cached.slides] == [s.window_start for s in reference.slides]


class HashRetriever:
    """retrieve(query, k): k passages chosen by crc32(query); a real Retriever, not a mock."""

    def __init__(self, texts: list[str] = TEXTS) -> None:
        self.texts = texts
        self.calls: list[str] = []

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls.append(query)
        h = zlib.crc32(query.encode())
        return [Passage(id=str((h + i) % len(self.texts)), text=self.texts[(h + i) % len(self.texts)],
                        title=f"T{(h + i) % len(self.texts)}", score=1.0 / (i + 1)) for i in range(k)]


class ScriptedRetriever:
    """Passages by a script: call i returns the passage named by ``script[i]`` (the last one after the
    script ends), so a test decides which retrieval points find the same passage again."""

    def __init__(self, script: str, texts: list[str] = TEXTS) -> None:
        self.script, self.texts = script, texts
        self.calls: list[str] = []

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls.append(query)
        key = self.script[min(len(self.calls), len(self.script)) - 1]
        n = ord(key) - ord("A")
        return [Passage(id=f"{key}{i}", text=self.texts[(n + i) % len(self.texts)], title=f"T{n}")
                for i in range(k)]


class FailingRetriever:
    """Raises on every second call: the engine must go on without a passage (or stop when strict)."""

    def __init__(self) -> None:
        self.calls = 0

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls += 1
        if self.calls % 2 == 0:
            raise ConnectionError("search service unavailable")
        return [Passage(id="0", text=TEXTS[0])]
