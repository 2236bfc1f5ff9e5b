"""What a generation returns: the text, the tokens, the retrieval log, window slides and timings.

    >>> from flashback_rag.results import GenerationStats
    >>> GenerationStats(generated_tokens=10, total_seconds=2.0).tokens_per_second
    5.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .retrievers.base import Passage


@dataclass
class RetrievalRecord:
    """One retrieval point: where it happened, the query, and what came back (or the error)."""

    step: int            # generated tokens before this retrieval
    position: int        # index of the retrieval point in prompt + generated tokens
    query: str
    passages: list[Passage] = field(default_factory=list)
    block_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    changed: bool = True   # the block differs from the one in place before this point (the first: any block)
    kept: bool = False     # append: the unchanged block stayed where it was (nothing cropped or re-fed)

    @property
    def passage_ids(self) -> list[str]:
        return [p.id for p in self.passages]

    @property
    def scores(self) -> list[float]:
        return [p.score for p in self.passages]


@dataclass
class SlideRecord:
    """The context window slid: the oldest prefix tokens were dropped and the cache recomputed."""

    step: int
    window_start: int     # first prompt+generated token index still in the context
    dropped_tokens: int   # how many were dropped by this slide


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0      # tokens fed in multi-token forwards (prompt, passage blocks, recomputes)
    decode_steps: int = 0        # one-token forwards
    forward_calls: int = 0
    reused_tokens: int = 0       # cached positions kept at retrieval points (what append saves)
    retrievals: int = 0
    blocks_changed: int = 0      # retrieval points whose block differed from the one in place
    retrieval_seconds: float = 0.0
    model_seconds: float = 0.0
    total_seconds: float = 0.0
    # one entry per segment (a request on vLLM): the context length sent, and how much of it came from
    # the cache (the kept prefix here; vLLM's prefix cache, rounded down to its block size, there)
    request_prompt_tokens: list[int] = field(default_factory=list)
    request_cached_tokens: list[int] = field(default_factory=list)

    @property
    def cached_fraction(self) -> float:
        """The share of all context tokens sent that were served from the cache."""
        sent = sum(self.request_prompt_tokens)
        return sum(self.request_cached_tokens) / sent if sent else 0.0

    @property
    def changed_share(self) -> float:
        """The share of retrieval points whose block changed (what prepend must recompute for)."""
        return self.blocks_changed / self.retrievals if self.retrievals else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.total_seconds if self.total_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_per_second"] = self.tokens_per_second
        data["cached_fraction"] = self.cached_fraction
        data["changed_share"] = self.changed_share
        return data


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str                     # "length", "eos" or "stop"
    pattern: str
    retrievals: list[RetrievalRecord] = field(default_factory=list)
    slides: list[SlideRecord] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    warnings: list[str] = field(default_factory=list)
    scores: list[Any] = field(default_factory=list, repr=False)   # per-step logits, if asked for
    token_nll: list[float] = field(default_factory=list, repr=False)   # FlashBack.score: each token's loss

    @property
    def perplexity(self) -> float | None:
        """exp(mean token loss) of a scored text (``FlashBack.score``); None for a generation."""
        import math

        return math.exp(sum(self.token_nll) / len(self.token_nll)) if self.token_nll else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, scores=[]))   # tensors are not JSON; leave them out
        data.pop("scores")
        data["stats"] = self.stats.to_dict()
        return data
