"""What both vLLM backends share: which settings vLLM can honour, and the per-request bookkeeping.

    >>> from flashback_rag.backends.base import SamplingSettings
    >>> from flashback_rag.backends.vllm_common import request_sampling
    >>> request_sampling(SamplingSettings(eos_id=2, banned_ids=(7,)), 16, segment=0)
    {'max_tokens': 16, 'temperature': 0.0, 'top_p': 1.0, 'ignore_eos': False, 'logit_bias': {7: -100.0}}
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..results import GenerationResult
from .base import SamplingSettings

# Greedy and seeded sampling are vLLM's own. Our repetition controls look at the running text only;
# vLLM's penalties also count the prompt, passages included, so they would mean something else here.
UNSUPPORTED = {
    "repetition_penalty": (1.0, "vLLM's penalty also counts the prompt, passages included"),
    "no_repeat_ngram_size": (0, "vLLM has no n-gram ban"),
    "output_scores": (False, "vLLM returns sampled tokens, not full logits"),
    "forced_ids": ((), "vLLM samples its own tokens; FlashBack.score reads a given text on transformers"),
}


def check_supported(sampling: SamplingSettings, backend: str, use_cache: bool) -> None:
    """Refuse, with the reason, what a vLLM backend cannot do the way the transformers one does."""
    for name, (neutral, why) in UNSUPPORTED.items():
        if getattr(sampling, name) != neutral:
            raise ConfigError(f"{name} is not supported on the {backend} backend ({why}); "
                              "use the transformers backend for it")
    if not use_cache:
        raise ConfigError("use_cache=False (the recompute reference) runs on the transformers backend only")


def request_sampling(sampling: SamplingSettings, max_tokens: int, segment: int) -> dict[str, Any]:
    """Sampling fields of one request (names shared by ``vllm.SamplingParams`` and the HTTP API)."""
    out: dict[str, Any] = {"max_tokens": max_tokens, "temperature": float(sampling.temperature),
                           "top_p": float(sampling.top_p), "ignore_eos": sampling.eos_id is None}
    if sampling.top_k:
        out["top_k"] = int(sampling.top_k)
    seed = sampling.segment_seed(segment)
    if seed is not None and not sampling.greedy:
        out["seed"] = seed
    if sampling.banned_ids:
        out["logit_bias"] = {int(t): -100.0 for t in sampling.banned_ids}    # never a marker
    return out


def record_request(result: GenerationResult, prompt_tokens: int, cached_tokens: int | None,
                   seconds: float, generated: int) -> None:
    """Per-request statistics, in the fields the transformers backend fills too."""
    stats = result.stats
    cached = int(cached_tokens or 0)
    stats.request_prompt_tokens.append(prompt_tokens)
    stats.request_cached_tokens.append(cached)
    stats.reused_tokens += cached
    stats.prefill_tokens += prompt_tokens - cached
    stats.decode_steps += max(0, generated - 1)
    stats.forward_calls += 1
    stats.model_seconds += seconds


def finish_tokens(tokens: list[int], finish_reason: str | None, eos_id: int | None) -> list[int]:
    """The tokens of a finished request, with the EOS the loop needs to see when vLLM stopped on it."""
    if finish_reason == "stop" and eos_id is not None and (not tokens or tokens[-1] != eos_id):
        return [*tokens, eos_id]
    return tokens
