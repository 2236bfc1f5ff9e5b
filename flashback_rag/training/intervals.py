"""Bootstrap intervals for perplexities and paired perplexity ratios.

Tokens of one text are not independent, so the resampling unit is a *group* of scored tokens (a
validation window, or a run of consecutive chunks of a text): every draw resamples groups with
replacement and recomputes the token-weighted mean loss. A ratio between two runs scored on the same
tokens is *paired*: both are resampled with the same draw, so its interval reflects only how the runs
differ on the same text.

    >>> import torch
    >>> sums = {"a": torch.tensor([2.0, 4.0, 3.0]), "b": torch.tensor([3.0, 5.0, 3.5])}   # NLL per group
    >>> counts = torch.tensor([1.0, 2.0, 1.0])                                            # tokens per group
    >>> draws = bootstrap_means(sums, counts, samples=200, seed=0)
    >>> lo, hi = ppl_interval(draws["a"])
    >>> lo <= math.exp(9 / 4) <= hi
    True
    >>> point, lo, hi = ratio_interval(sums["a"], sums["b"], counts, draws["a"], draws["b"])
    >>> round(point, 4) == round(math.exp((9 - 11.5) / 4), 4), lo <= point <= hi
    (True, True)
"""

from __future__ import annotations

import math

import torch

LEVEL = 0.95


def bootstrap_means(sums: dict[str, torch.Tensor], counts: torch.Tensor, samples: int = 2000,
                    seed: int = 42) -> dict[str, torch.Tensor]:
    """Mean loss per draw ``(samples,)`` for every run; ``sums[k]`` is the summed NLL per group.

    All runs are resampled with the same draws of groups (what makes their ratios paired).
    """
    counts = counts.double()
    n = counts.numel()
    if n == 0:
        raise ValueError("no groups to resample")
    for key, s in sums.items():
        if s.numel() != n:
            raise ValueError(f"run {key!r} has {s.numel()} groups, the counts {n}: score the same tokens")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (samples, n), generator=gen)
    weight = torch.zeros(samples, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(samples, n, dtype=torch.float64))
    tokens = weight @ counts
    return {k: (weight @ s.double()) / tokens for k, s in sums.items()}


def _quantiles(values: torch.Tensor, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(lo), float(hi)


def ppl_interval(draws: torch.Tensor, level: float = LEVEL) -> list[float]:
    """The perplexity interval from a run's per-draw mean losses."""
    return [math.exp(v) for v in _quantiles(draws, level)]


def ratio_interval(sums_a: torch.Tensor, sums_b: torch.Tensor, counts: torch.Tensor, draws_a: torch.Tensor,
                   draws_b: torch.Tensor, level: float = LEVEL) -> list[float]:
    """``[ratio, lo, hi]``: perplexity of a over b on the same tokens, with its paired interval."""
    total = float(counts.double().sum())
    point = math.exp((float(sums_a.double().sum()) - float(sums_b.double().sum())) / total)
    lo, hi = _quantiles(draws_a - draws_b, level)
    return [point, math.exp(lo), math.exp(hi)]


def group_sums(values: torch.Tensor, counts: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and token counts of runs of ``group`` consecutive items (the last run may be shorter)."""
    if group < 1:
        raise ValueError("group must be at least 1")
    ids = torch.arange(values.numel()) // group
    n = int(ids[-1]) + 1 if values.numel() else 0
    return (torch.zeros(n, dtype=torch.float64).index_add_(0, ids, values.double()),
            torch.zeros(n, dtype=torch.float64).index_add_(0, ids, counts.double()))
