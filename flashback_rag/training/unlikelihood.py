"""Copy unlikelihood: teach the model that a short match with a passage is no reason to go on quoting it.

The FlashBack adapter learns from the "copy" windows (the passage holds the text's continuation) to follow
a passage that matches the recent text, and in free generation it then quotes passages at length after a
match of a word or two. At each target position this module finds the passage's *copy candidate*: the
token that would continue the longest match (at least ``min_match`` tokens) between the end of the text
read so far and a passage. When that candidate is not the real next token, the training loss adds the
token-level unlikelihood ``-log(1 - p(candidate))`` (Welleck et al., 2020, applied to passage copies):
copying is pushed down exactly where the text stopped following the passage, and left alone where it
does follow it (the candidate is the target, which the cross-entropy already rewards).

    >>> window, points = [5, 6, 7, 8, 9, 4], [3]
    >>> passages = [[[1, 6, 7, 3, 2]]]          # the passage holds "6 7" followed by 3
    >>> copy_candidates(window, points, passages, stride=3, min_match=2)   # targets 8, 9, 4
    [3, -1, -1]
    >>> logits = torch.zeros(1, 3, 10)
    >>> term = copy_unlikelihood(logits, torch.tensor([[8, 9, 4]]), torch.tensor([[3, -1, -1]]))
    >>> round(float(term[0, 0]), 4), float(term[0, 1])      # -log(1 - 1/10); no candidate: 0
    (0.1054, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NO_CANDIDATE = -1
DEFAULT_MIN_MATCH = 2


def copy_candidate(context: Sequence[int], passages: Sequence[Sequence[int]], min_match: int) -> int:
    """The token continuing the longest match (>= ``min_match``) of ``context``'s end in a passage, or -1.

    Among equally long matches the first (in passage order) wins. A match that ends a passage has no
    continuation and does not count.
    """
    best, candidate = 0, NO_CANDIDATE
    if not context:
        return candidate
    for passage in passages:
        # ends: passage indices e with passage[e - m + 1 .. e] == context[-m:], grown one token at a time
        ends = [e for e in range(len(passage) - 1) if passage[e] == context[-1]]
        m = 1
        while ends:
            if m >= min_match and m > best:
                best, candidate = m, passage[ends[0] + 1]
            if m >= len(context):
                break
            before = context[-m - 1]
            ends = [e for e in ends if e - m >= 0 and passage[e - m] == before]
            m += 1
    return candidate


def copy_candidates(window: Sequence[int], points: Sequence[int], passages: Sequence[Sequence[Sequence[int]]],
                    stride: int, min_match: int = DEFAULT_MIN_MATCH) -> list[int]:
    """One candidate per target, in the order :func:`~flashback_rag.training.packing.pack_window` lays them
    out (point by point, ``stride`` each); ``passages[j]`` are the passages (token lists) of ``points[j]``."""
    if min_match < 1:
        raise ValueError(f"min_match must be at least 1, got {min_match}")
    window = list(window)
    out: list[int] = []
    for at, found in zip(points, passages):
        for t in range(stride):
            out.append(copy_candidate(window[:at + t], found, min_match) if found else NO_CANDIDATE)
    return out


def copy_unlikelihood(logits: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p(candidate))`` per target ``(B, N)``; 0 where there is no candidate, it is the label, or
    the label is -100. ``logits`` ``(B, N, V)`` are those the cross-entropy uses (markers already masked)."""
    active = (candidates >= 0) & (candidates != labels) & (labels != -100)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    chosen = log_probs.gather(-1, candidates.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # log(1 - p) computed as log1p(-exp(log p)); p is clamped below 1 so a confident copy gives a large,
    # finite loss instead of infinity
    term = -torch.log1p(-chosen.exp().clamp(max=1 - 1e-6))
    return torch.where(active, term, torch.zeros_like(term))
