"""Choosing the next token, and turning tokens into text as they come (with stop strings).

    >>> import torch
    >>> from flashback_rag.sampling import Sampler
    >>> Sampler()(torch.tensor([0.1, 2.0, -1.0]))          # greedy by default
    1
    >>> s = Sampler(temperature=0.8, top_k=2, seed=0)
    >>> s(torch.tensor([0.1, 2.0, -1.0])) in (0, 1)          # never the third: top_k=2
    True
    >>> rep = RepetitionControls(no_repeat_ngram_size=2)
    >>> logits = rep(torch.zeros(5), [1, 2, 3, 1])            # "1 2" was seen: 2 may not follow 1 again
    >>> int(torch.argmax(logits)) != 2 and logits[2].item() == float("-inf")
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import ConfigError


class Sampler:
    """Greedy when ``temperature`` is 0; otherwise temperature, top-k and top-p (nucleus) sampling."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | None = None, device: torch.device | str = "cpu") -> None:
        if not _finite(temperature) or temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not _finite(top_p) or not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {top_k!r}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.greedy = temperature == 0
        self.seed = seed
        self.generator = None
        if not self.greedy:
            self.generator = self._new_generator(torch.device(device))

    def _new_generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick a token from one row of logits, shape (vocab,). ``int(...)`` of the choice is the one
        point where the host waits for the device."""
        if self.greedy:
            return int(torch.argmax(logits))
        if self.generator.device != logits.device:
            # a model split over devices (device_map) gives its logits where its last layer is: the
            # draws must come from a generator there (seeded alike, before its first draw)
            self.generator = self._new_generator(logits.device)
        # The best logit moved to 0 before dividing, and the temperature kept inside float32's range, so
        # every finite temperature works: a tiny one (1e-300: greedy in effect) turns finite gaps into -inf,
        # never 0 / 0 or inf - inf = nan, and a huge one (1e39, uniform in effect) cannot become inf and
        # turn a masked -inf into nan. Logits a penalty pushed to +inf tie for first. No branch on a
        # tensor's value: the host does not wait for the device here.
        logits = logits.float()
        span = torch.finfo(logits.dtype)
        top = logits.max()
        shifted = torch.where(torch.isposinf(top), torch.where(torch.isposinf(logits), 0.0, float("-inf")),
                              logits - top)
        logits = shifted / min(max(float(self.temperature), span.tiny), span.max)
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest set whose mass reaches top_p (the first token always stays)
            drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RepetitionControls:
    """``repetition_penalty`` and ``no_repeat_ngram_size`` with Hugging Face ``generate``'s meaning.

    Both look at the running text (prompt + generated), never at retrieved passages: copying a fact
    from a passage is not repetition. Penalty: a token already in the text has its logit divided by
    the penalty when positive, multiplied when negative. No-repeat: a token that would complete an
    n-gram already in the text is banned. The n-gram index grows with the text, so a step costs O(1).
    """

    def __init__(self, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> None:
        if not _finite(repetition_penalty) or repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be a finite number > 0, got {repetition_penalty!r}")
        if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) \
                or no_repeat_ngram_size < 0:
            raise ConfigError(f"no_repeat_ngram_size must be an integer >= 0, got {no_repeat_ngram_size!r}")
        self.penalty, self.n = float(repetition_penalty), no_repeat_ngram_size
        self.active = self.penalty != 1.0 or self.n > 0
        self._seen: set[int] = set()
        self._next: dict[tuple[int, ...], set[int]] = {}
        self._indexed = 0           # tokens of the text already in _seen / _next

    def _index(self, tokens: Sequence[int]) -> None:
        n = self.n
        for i in range(self._indexed, len(tokens)):
            self._seen.add(tokens[i])
            if n > 0 and i >= n - 1:
                self._next.setdefault(tuple(tokens[i - n + 1:i]), set()).add(tokens[i])
        self._indexed = len(tokens)

    def __call__(self, logits: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
        """``logits`` (vocab,) adjusted for ``tokens``, the text so far (only ever appended to)."""
        if not self.active:
            return logits
        self._index(tokens)
        # Index tensors are copied to the logits' device without a wait (a list index, or torch.tensor(...,
        # device=cuda), would make the host wait for the GPU at every token).
        if self.penalty != 1.0 and self._seen:
            ids = _on(sorted(t for t in self._seen if t < logits.shape[-1]), logits.device)
            picked = logits.index_select(0, ids)
            # the penalty kept inside the logits' float range, the result clamped to it: a penalty of 1e-300
            # or 1e300 moves a logit to the largest or smallest float, never to inf or 0 x inf = nan
            span = torch.finfo(logits.dtype)
            penalty = min(max(self.penalty, span.tiny), span.max)
            moved = torch.where(picked > 0, picked / penalty, picked * penalty).clamp(span.min, span.max)
            logits.index_copy_(0, ids, moved)
        if self.n > 0 and len(tokens) >= self.n - 1:
            banned = self._next.get(tuple(tokens[len(tokens) - self.n + 1:]) if self.n > 1 else (), ())
            if banned:
                logits.index_fill_(0, _on(sorted(banned), logits.device), float("-inf"))
        return logits


def _on(ids: list[int], device: torch.device) -> torch.Tensor:
    """``ids`` as a long tensor on ``device``, copied without making the host wait."""
    host = torch.tensor(ids, dtype=torch.long)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


class TextAssembler:
    """Incremental detokenization with stop strings.

    ``push(token)`` returns the text that is now safe to show: complete characters only (no half of a
    multi-byte character), and nothing that could still turn out to be the start of a stop string.
    ``stopped`` becomes True once a stop string appears; the text then ends just before it.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""          # all text decoded so far (possibly past a stop string)
        self.emitted = 0        # characters of self.text already handed out
        self.stopped = False
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        # Decode a short window, not the whole text: the prefix gives the tokenizer its context
        # (leading spaces), and an incomplete character shows up as U+FFFD until its last byte.
        before = self._decode(self.ids[self._prefix_offset:self._read_offset])
        after = self._decode(self.ids[self._prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush what was held back; call once at the end."""
        full = self._decode(self.ids)
        if not self.stopped and full.startswith(self.text):
            self.text = full
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if not self.stopped and self.stop:
            start = max(0, self.emitted - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
        end = len(self.text) if (final or self.stopped) else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:end]
        self.emitted = end
        return out

    @property
    def final_text(self) -> str:
        return self.text
