"""What the decoding loop asks of a backend: tokens for a logical context, one segment at a time.

The loop (``decoding.FlashBack``) owns everything FlashBack is about: the pattern, the retrieval points,
the window slide and the records. A backend only answers "continue this token sequence for up to ``n``
tokens": the transformers backend with a KV cache it crops to the longest still-valid prefix (the exact
reference), vLLM with its automatic prefix cache, one request per segment. A segment is a generator so
the loop can stop it early (EOS, a stop string) and the transformers backend never computes a token it
will not use.

    >>> from flashback_rag.backends.base import SamplingSettings
    >>> SamplingSettings(temperature=0.7, seed=3).segment_seed(2)       # every segment its own stream
    5
    >>> SamplingSettings().greedy
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..results import GenerationResult


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen; the same for every segment of one generation."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    eos_id: int | None = None                 # None: EOS is not special (ignore_eos)
    banned_ids: tuple[int, ...] = ()          # never generated (the markers)
    vocab_size: int | None = None             # ids at or past it are never generated
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    output_scores: bool = False
    forced_ids: tuple[int, ...] = ()          # score a given text: these are "chosen", their NLL recorded

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def segment_seed(self, segment: int) -> int | None:
        """A seed per segment, so that a backend seeding each request does not repeat one stream."""
        return None if self.seed is None else self.seed + segment


class Session(Protocol):
    """One generation's state on a backend (its KV cache, its sampler)."""

    def segment(self, context: list[int], max_tokens: int, history: Sequence[int],
                positions: Sequence[int] | None = None) -> Iterator[int]:
        """Yield up to ``max_tokens`` tokens continuing ``context``; ``history`` is the running text
        (prompt + generated, no passages), for repetition controls. EOS, when produced, is yielded.
        ``positions``: the context's position ids where they are not ``0..n-1`` (only on a backend
        whose ``custom_positions`` is true); generated tokens continue from the last one."""
        ...

    def close(self) -> None:
        ...


class Backend(Protocol):
    """Something that runs a causal LM; see :class:`Session`."""

    name: str
    concurrent: bool          # True when many sessions may run at once from threads (vLLM batches them)
    custom_positions: bool    # True when a segment may carry its own position ids

    def session(self, result: GenerationResult, sampling: SamplingSettings, *, use_cache: bool = True,
                capacity: int | None = None) -> Session:
        ...

    @property
    def max_context(self) -> int | None:
        ...

    @property
    def model_type(self) -> str:
        ...
