"""Choosing the next token, and turning tokens into text as they come (with stop strings).

    >>> import torch
    >>> from flashback_rag.sampling import Sampler
    >>> Sampler()(torch.tensor([0.1, 2.0, -1.0]))          # greedy by default
    1
    >>> s = Sampler(temperature=0.8, top_k=2, seed=0)
    >>> s(torch.tensor([0.1, 2.0, -1.0])) in (0, 1)          # never the third: top_k=2
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError


class Sampler:
    """Greedy when ``temperature`` is 0; otherwise temperature, top-k and top-p (nucleus) sampling."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | None = None, device: torch.device | str = "cpu") -> None:
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {top_k}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.greedy = temperature == 0
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick a token from one row of logits, shape (vocab,)."""
        if self.greedy:
            return int(torch.argmax(logits))
        logits = logits.float() / self.temperature
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
