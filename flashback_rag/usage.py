"""Token usage of a generation, in the shapes LlamaIndex and LangChain count tokens in.

Frameworks count what a hosted API bills: the prompt and the completion. A FlashBack generation also
feeds the passage blocks it retrieves (and, with an echo, a copy of the last prefix tokens after each
block); that is compute the user pays for, so it is reported beside them in a ``flashback`` section.

    >>> from flashback_rag import FlashBack, FlashBackConfig, load_model
    >>> from flashback_rag.usage import TokenUsage
    >>> class Turns:                         # each retrieval returns the other passage
    ...     def __init__(self):
    ...         self.calls = 0
    ...     def retrieve(self, query, k):
    ...         self.calls += 1
    ...         return ["cats purr" if self.calls % 2 else "dogs bark"]
    >>> model, tokenizer = load_model("tiny-random-llama")
    >>> fb = FlashBack(model, tokenizer, Turns(), FlashBackConfig(stride=4, echo_tokens=2))
    >>> usage = TokenUsage.of(fb.generate("cats", max_new_tokens=8, ignore_eos=True), fb.config)
    >>> usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.retrievals
    (4, 8, 12, 2)
    >>> usage.passage_tokens, usage.echo_tokens      # two 9-byte passages + 2 markers each, 2-token echoes
    (22, 4)
    >>> sorted(usage.openai())
    ['completion_tokens', 'flashback', 'prompt_tokens', 'total_tokens']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .config import FlashBackConfig
from .results import GenerationResult


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one generation (or the sum of several), counted with the model's own tokenizer.

    prompt_tokens:     the prompt as the model read it (special tokens such as a BOS included).
    completion_tokens: the tokens generated (a stop token that ended the text is not among them).
    passage_tokens:    passage blocks fed to the model: the passages as truncated, plus the markers (a
                       block kept in place because it came back unchanged is not fed again).
    echo_tokens:       prefix tokens repeated after the blocks fed (append with ``echo_tokens``).
    prefill_tokens:    every token fed in a multi-token forward: prompt, blocks, echoes, and what prepend
                       (or a window slide) recomputes; the engine's own count.
    reused_tokens:     cached positions kept at retrieval points instead of being fed again.
    retrievals:        retrieval points.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    passage_tokens: int = 0
    echo_tokens: int = 0
    prefill_tokens: int = 0
    reused_tokens: int = 0
    retrievals: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt + completion, as the frameworks define a total."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, result: GenerationResult, config: FlashBackConfig) -> "TokenUsage":
        stats = result.stats
        echo = config.layout_echo
        # blocks fed to the model: an unchanged block kept in place (keep_unchanged) is not fed again
        blocks = [r for r in result.retrievals if r.block_tokens and not r.kept]
        return cls(
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=len(result.token_ids),
            passage_tokens=sum(r.block_tokens for r in blocks),
            # the echo repeats up to `echo` tokens before the retrieval point (fewer at the very start)
            echo_tokens=sum(min(echo, r.position) for r in blocks),
            prefill_tokens=stats.prefill_tokens,
            reused_tokens=stats.reused_tokens,
            retrievals=len(result.retrievals),
        )

    @classmethod
    def total(cls, usages: Iterable["TokenUsage"]) -> "TokenUsage":
        """The sum of several generations' usage (a batch)."""
        sums = dict.fromkeys(asdict(cls()), 0)
        for usage in usages:
            for key, value in asdict(usage).items():
                sums[key] += value
        return cls(**sums)

    def flashback(self) -> dict[str, int]:
        """The ``flashback`` section: what the engine fed beyond prompt and completion."""
        return {"passage_tokens": self.passage_tokens, "echo_tokens": self.echo_tokens,
                "prefill_tokens": self.prefill_tokens, "reused_tokens": self.reused_tokens,
                "retrievals": self.retrievals}

    def openai(self) -> dict[str, Any]:
        """``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` (what LlamaIndex's
        TokenCountingHandler and LangChain's ``llm_output["token_usage"]`` read), plus ``flashback``."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "flashback": self.flashback()}

    def langchain(self) -> dict[str, int]:
        """LangChain's ``UsageMetadata`` (``AIMessage.usage_metadata``): input, output and total tokens."""
        return {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


__all__ = ["TokenUsage"]
