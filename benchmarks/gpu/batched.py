"""The engine's forward schedule for B sequences at once: what batching would gain, on the model directly.

The transformers backend decodes one sequence at a time (``concurrent = False``), so the engine cannot
show batching itself. With random prompts and passages every sequence has the same lengths at every
step (``doc_tokens``-long passages, the same stride), so B sequences follow one schedule,
``benchmarks/speed.py``'s :func:`schedule` (the forwards the engine makes, tested against its
statistics), with no padding: at each forward the shared cache (one :class:`GrowingCache`, batch B) is
cropped to the schedule's context length and the B rows are fed at once, each with its own tokens (its
own passages). Decode steps feed each row's greedy token and read all B of them on the host, as a
decoding loop must; a retrieval forward feeds random ids (their values do not change the cost).

    >>> import torch
    >>> from flashback_rag.models import load_model
    >>> model, _ = load_model("tiny-random-llama")
    >>> out = replay(model, "append", batch=2, init=24, total=40, stride=8, block=10, device=torch.device("cpu"))
    >>> out["forwards"], out["fed_tokens"]     # per row: 24 + 10 tokens, 7 decodes, 8 + 10, 7 decodes
    (16, 66)
"""

from __future__ import annotations

import time
from typing import Any

import torch

from common import benchmark


def replay(model, pattern: str, batch: int, init: int, total: int, stride: int, block: int,
           device: torch.device, seed: int = 0, low: int = 0, high: int = 256) -> dict[str, Any]:
    """Run ``schedule(pattern, ...)`` for ``batch`` rows; seconds (wall clock, synchronized) and counts."""
    from flashback_rag.growing_cache import GrowingCache
    from flashback_rag.kv_cache import cache_keyword, crop_cache

    speed = benchmark("speed")
    forwards = speed.schedule(pattern, init, total, stride, block)
    key = cache_keyword(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = GrowingCache(total + block + stride)
    fed_tokens, last = 0, None
    speed.synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for fed, context in forwards:
            crop_cache(cache, context)           # a retrieval point: back to what stays valid
            if fed == 1:
                ids = last[:, None]                                               # (B, 1)
            else:
                ids = torch.randint(low, high, (batch, fed), device=device, generator=generator)   # (B, fed)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{key: cache})
            last = out.logits[:, -1].argmax(-1)                                   # (B,)
            last.tolist()                        # the host reads the B tokens (the one wait a step)
            fed_tokens += fed
    speed.synchronize(device)
    return {"seconds": time.perf_counter() - started, "forwards": len(forwards), "fed_tokens": fed_tokens}


def estimate_seconds(pattern: str, batch: int, init: int, total: int, stride: int, block: int,
                     constants: dict[str, float]) -> float:
    """The replay's time from one sequence's calibration: a decode step reads the weights once for all
    rows (about the same time for a few rows; priced 1.5x), fed tokens cost per row."""
    forwards = benchmark("speed").schedule(pattern, init, total, stride, block)
    decodes = sum(1 for fed, _ in forwards if fed == 1)
    prefill = sum(fed for fed, _ in forwards if fed > 1)
    return 1.5 * decodes * constants["decode_step_s"] + batch * prefill * constants["prefill_token_s"]
