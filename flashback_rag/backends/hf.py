"""The transformers backend: the exact reference, with a KV cache cropped token by token.

    >>> from flashback_rag.backends.hf import TransformersBackend
    >>> from flashback_rag.backends.base import SamplingSettings
    >>> from flashback_rag.models import load_model
    >>> from flashback_rag.results import GenerationResult
    >>> model, _ = load_model("tiny-random-llama")
    >>> backend = TransformersBackend(model)
    >>> session = backend.session(GenerationResult("", [], "length", "none"), SamplingSettings())
    >>> len(list(session.segment([1, 5, 9], 3, [1, 5, 9])))
    3
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..kv_cache import CachedLogits, RecomputedLogits
from ..models import max_positions
from ..results import GenerationResult
from ..sampling import RepetitionControls, Sampler
from .base import SamplingSettings


class TransformersBackend:
    """A Hugging Face causal LM in this process. Sequences run one at a time."""

    name = "transformers"
    concurrent = False
    custom_positions = True      # takes position ids per token (block_positions="before")

    def __init__(self, model) -> None:
        self.model = model

    @property
    def max_context(self) -> int | None:
        return max_positions(self.model)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def session(self, result: GenerationResult, sampling: SamplingSettings, *, use_cache: bool = True,
                capacity: int | None = None) -> "TransformersSession":
        return TransformersSession(self, result, sampling, use_cache, capacity)


class TransformersSession:
    """One generation: a cached (or recomputing) logit source, a sampler and the repetition controls."""

    def __init__(self, backend: TransformersBackend, result: GenerationResult, sampling: SamplingSettings,
                 use_cache: bool, capacity: int | None) -> None:
        model, stats = backend.model, result.stats
        self.result, self.sampling = result, sampling
        self.use_cache = use_cache
        self.source = (CachedLogits(model, stats, capacity=capacity) if use_cache
                       else RecomputedLogits(model, stats))
        self.sampler = Sampler(sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed,
                               device=backend.device)
        self.controls = RepetitionControls(sampling.repetition_penalty, sampling.no_repeat_ngram_size)
        self.banned = list(sampling.banned_ids)
        self._banned_index: torch.Tensor | None = None      # the same ids, on the logits' device
        self.forced = 0          # how many of sampling.forced_ids were read so far

    def segment(self, context: list[int], max_tokens: int, history: Sequence[int],
                positions: Sequence[int] | None = None) -> Iterator[int]:
        stats = self.result.stats
        with torch.inference_mode():
            reused = stats.reused_tokens
            logits = self.source.resync(context, positions)
            stats.request_prompt_tokens.append(len(context))
            stats.request_cached_tokens.append(stats.reused_tokens - reused)
            produced: list[int] = []
            for i in range(max_tokens):
                if i:
                    # between retrieval points the cache only grows; the reference recomputes it all
                    logits = (self.source.extend(produced[-1]) if self.use_cache
                              else self.source.resync(context + produced, _continued(positions, len(produced))))
                token = self._pick(logits, history)
                produced.append(token)
                yield token

    def _pick(self, logits: torch.Tensor, history: Sequence[int]) -> int:
        """The next token from one row of logits. Everything here stays on the logits' device; the only
        wait for the GPU is the sampler reading the chosen id."""
        s = self.sampling
        # Choose in float32 whatever the weights' dtype: temperature, top-p and the penalties in bf16
        # would round the logits they compare (a no-op for a float32 model).
        logits = logits.float()
        if self.controls.active:
            logits = self.controls(logits, history)
        if self.banned:
            if self._banned_index is None or self._banned_index.device != logits.device:
                self._banned_index = torch.tensor(self.banned, dtype=torch.long).to(logits.device, non_blocking=True)
            logits.index_fill_(0, self._banned_index, float("-inf"))      # never a marker
        if s.vocab_size is not None and logits.shape[-1] > s.vocab_size:
            logits[s.vocab_size:] = float("-inf")    # never an id the tokenizer cannot decode
        if s.output_scores:
            self.result.scores.append(logits.float().cpu())
        if s.forced_ids:          # scoring a given text: its next token, and what the model thought of it
            token = s.forced_ids[self.forced]
            self.forced += 1
            self.result.token_nll.append(-float(torch.log_softmax(logits.float(), -1)[token]))
            return token
        return self.sampler(logits)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.source = None


def _continued(positions: Sequence[int] | None, more: int) -> list[int] | None:
    """``positions`` followed by ``more`` tokens, each one position further (None stays the default)."""
    if positions is None:
        return None
    return list(positions) + list(range(positions[-1] + 1, positions[-1] + 1 + more))
