"""Two numbers that make degenerate generations visible: copying from the passages, and self-repetition.

    >>> copy_share([1, 2, 3, 4, 9], [[0, 1, 2, 3, 4, 5]], n=3)     # 3-grams (1,2,3) and (2,3,4) copied
    0.6666666666666666
    >>> repeat_share([1, 2, 3, 1, 2, 3, 1, 2], n=3)                 # 6 3-grams, the last 3 repeat the first 3
    0.5
    >>> copy_share([1, 2], [[1, 2]], n=3)                            # too short to hold an n-gram
    0.0

Both work on token ids (the same tokenizer for output and passages), so they count what the model really
emitted. ``copy_share``: the share of the output's n-grams found verbatim in the passages it was given.
``repeat_share``: the share of the output's n-grams that already occurred earlier in the output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """All n-grams of ``ids`` in order (none when it is shorter than ``n``)."""
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def copy_share(output: Sequence[int], sources: Iterable[Sequence[int]], n: int = 8) -> float:
    """Share of the n-grams of ``output`` that occur verbatim in any of ``sources``."""
    grams = ngrams(output, n)
    if not grams:
        return 0.0
    seen = {g for source in sources for g in ngrams(source, n)}
    return sum(g in seen for g in grams) / len(grams)


def repeat_share(output: Sequence[int], n: int = 8) -> float:
    """Share of the n-grams of ``output`` that already occurred earlier in it."""
    grams = ngrams(output, n)
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)
