"""Where logits come from: a KV cache that keeps what stays valid, or a full recompute (reference).

Both sources take the *logical context* (the whole token sequence the model should read) and return
the logits of its last position. The cached source keeps the longest common prefix of what it holds
and the new context, crops the rest, and feeds only the new tokens. Because attention is causal, the
keys and values of a position depend only on the tokens up to it, so reusing a common prefix is exact:
that single rule covers FlashBack's crop-and-append, prepend's full recompute, and window slides.

    >>> from flashback_rag.kv_cache import common_prefix_len
    >>> common_prefix_len([1, 2, 3, 9], [1, 2, 3, 4, 5])
    3
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import torch


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (slice comparisons run in C; binary search on the length)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n          # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers 5 cache (DynamicCache or GrowingCache)."""
    current = cache.get_seq_length()
    if length < current:
        cache.crop(length - current)      # transformers 5 takes a negative count of tokens to remove


def _logits_kwargs(model) -> dict:
    # A PEFT wrapper's forward takes **kwargs and hands them to the base model: look at that one,
    # or every prefill would compute full-vocabulary logits for every position.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def cache_keyword(model) -> str:
    """The forward() keyword that takes the KV cache: ``cache`` since transformers 5.24 (where
    ``past_key_values`` warns that it goes away in 5.40), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """``values`` as a (1, n) long tensor on ``device`` without a host sync.

    ``torch.tensor(..., device="cuda")`` copies with ``non_blocking=False``, which waits for the GPU to
    finish all queued work (a host sync per forward); a non-blocking copy from host memory is staged by
    the driver at once and ordered on the stream like any kernel.
    """
    host = torch.tensor([list(values)], dtype=torch.long)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


class _ForwardTimer:
    """``stats.model_seconds`` without a host sync on a GPU.

    On the CPU a forward is done when it returns: wall clock around it. On CUDA the forward only queues
    kernels; a CUDA event before and after it times it on the GPU's own clock, and a pair is read once
    the GPU has passed it (checked without waiting at the next forward, since reading the token already
    waited), the rest at :meth:`flush` when the session ends. The events are on the stream of the model's
    first device: a model split over GPUs (device_map) is timed as that GPU sees it.
    """

    def __init__(self, device: torch.device, stats) -> None:
        self.stats = stats
        self.device = device
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        self._collect(wait=False)
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(torch.cuda.current_stream(self.device))
        return begin

    def stop(self, begin) -> None:
        if not self.cuda:
            self.stats.model_seconds += time.perf_counter() - begin
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        self.pending.append((begin, end))

    def _collect(self, wait: bool) -> None:
        while self.pending:
            begin, end = self.pending[0]
            if not end.query():          # the GPU has not got there yet
                if not wait:
                    return
                end.synchronize()
            self.pending.pop(0)
            self.stats.model_seconds += begin.elapsed_time(end) / 1000.0

    def flush(self) -> None:
        self._collect(wait=True)


class _Source:
    def __init__(self, model, stats) -> None:
        self.model = model
        self.stats = stats
        self.device = next(model.parameters()).device
        self._keep_last = _logits_kwargs(model)
        self._cache_key = cache_keyword(model)
        self._timer = _ForwardTimer(self.device, stats)

    def _run(self, ids: Sequence[int], positions: Sequence[int] | None = None, **kwargs) -> torch.Tensor:
        """One forward over ``ids`` (at ``positions``, else where the model puts them); returns the last
        position's logits (vocab,). Nothing here waits for the GPU: the caller's read of the token does."""
        started = self._timer.start()
        input_ids = to_device(ids, self.device)
        if positions is not None:
            kwargs["position_ids"] = to_device(positions, self.device)
        out = self.model(input_ids=input_ids, **kwargs, **self._keep_last)
        logits = out.logits[0, -1]
        self._timer.stop(started)
        self.stats.forward_calls += 1
        if len(ids) == 1:
            self.stats.decode_steps += 1
        else:
            self.stats.prefill_tokens += len(ids)
        return logits

    def close(self) -> None:
        """Settle the statistics (the GPU timings still in flight); the source is not used afterwards."""
        self._timer.flush()


class CachedLogits(_Source):
    """Logits from a KV cache that is reused across steps and cropped at retrieval points.

    ``capacity``: the longest context expected; the cache's buffers are allocated that long once, so
    neither decoding (no per-token ``torch.cat``) nor prepend's recompute (no new cache) allocates.
    """

    def __init__(self, model, stats, capacity: int | None = None) -> None:
        super().__init__(model, stats)
        self.capacity = capacity
        self.cache = None
        self.held: list[int] = []       # the logical tokens whose keys/values the cache holds
        self.held_positions: list[int] = []   # ... and the position ids they were computed at

    def _fresh(self):
        from .growing_cache import DEFAULT_CAPACITY, GrowingCache

        # A full-attention cache in preallocated buffers: every layer can be cropped to any length.
        return GrowingCache(self.capacity or DEFAULT_CAPACITY)

    def resync(self, context: list[int], positions: Sequence[int] | None = None) -> torch.Tensor:
        """Logits for an arbitrary new ``context`` (at ``positions``, default ``0..n-1``): keep the common
        prefix, feed the rest. A kept key must match in token *and* position (rotary keys carry it)."""
        positions = list(range(len(context))) if positions is None else list(positions)
        keep = min(common_prefix_len(self.held, context), common_prefix_len(self.held_positions, positions),
                   len(context) - 1)
        if self.cache is None:
            self.cache = self._fresh()
        crop_cache(self.cache, keep)    # keep == 0 empties it but keeps its buffers
        self.stats.reused_tokens += keep
        self.held, self.held_positions = self.held[:keep], self.held_positions[:keep]
        return self._feed(context[keep:], positions[keep:])

    def extend(self, token: int) -> torch.Tensor:
        """Logits after appending one token to the context the cache already holds."""
        return self._feed([token], [self.held_positions[-1] + 1])

    def _feed(self, ids: Sequence[int], positions: list[int]) -> torch.Tensor:
        # Positions that simply continue the cache are left to the model, so the default layouts run the
        # very same forward as before (and models with learned absolute positions never see any).
        given = None if positions == list(range(len(self.held), len(self.held) + len(ids))) else positions
        logits = self._run(ids, given, **{self._cache_key: self.cache}, use_cache=True)
        self.held.extend(ids)
        self.held_positions.extend(positions)
        return logits


class RecomputedLogits(_Source):
    """Reference mode: every step recomputes the whole logical context from scratch, no cache."""

    def resync(self, context: list[int], positions: Sequence[int] | None = None) -> torch.Tensor:
        if positions is None:
            return self._run(context, use_cache=False)
        # An explicit mask: with position ids and no mask, transformers reads a drop in the positions as
        # the start of another packed sequence and would hide the prefix from the block's readers.
        mask = torch.ones((1, len(context)), dtype=torch.long, device=self.device)   # a fill: no copy, no sync
        return self._run(context, positions, attention_mask=mask, use_cache=False)

    extend = None   # the reference mode always passes the whole context
