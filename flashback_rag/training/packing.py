"""Packed sequences: one document window read once, then a passage block + target copy per retrieval point.

Separate examples re-read the shared prefix once per retrieval point: ``src + block + tgt`` for every
point ``i`` of a window. A packed sequence holds the window ``x[0:L]`` once, at positions ``0..L-1``,
followed, for every point ``i``, by its *segment* ``block_i + echo_i + x[i:i+s]`` at exactly the positions
decoding gives them (``i, i+1, ...``). A 4D attention mask lets each segment see ``x[:i]`` and itself
(causally) and nothing else, and the window see only itself (causally): every target token reads
precisely the logical context of :func:`flashback_rag.patterns.logical_context`, so the loss (and its
gradients) equal those of the separate examples, with the prefix computed once.

    >>> window, points, blocks = [1, 2, 3, 4, 5, 6], [2, 4], [[90, 7, 91], [90, 8, 91]]
    >>> p = pack_window(window, points, blocks, stride=2)
    >>> p.input_ids
    [1, 2, 3, 4, 5, 6, 90, 7, 91, 3, 4, 90, 8, 91, 5, 6]
    >>> p.position_ids
    [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8]
    >>> [p.input_ids[i] for i in p.predict_at], p.targets     # the token before each target predicts it
    ([91, 3, 91, 5], [3, 4, 5, 6])
    >>> [ex["src"] for ex in unpack_window(window, points, [[[7]], [[8]]], stride=2)]
    [[1, 2], [1, 2, 3, 4]]

A point whose block is empty (pattern ``none``, or no passage found) needs no segment: its targets are
scored in the window itself, which already reads exactly ``x[:i+t]``. The prepend layout cannot be packed
(the prefix attends to the passage); :func:`unpack_window` gives its separate examples.

Two ways to run a packed sequence, the same numbers (tested):

- ``mode="segments"`` (the default): the window in one forward (causal, its keys and values kept), then
  all segments in one batched forward over those keys and values, each segment's mask ``(m, L + m)``
  letting it see ``x[:i]`` and itself. Attention costs what each segment really reads.
- ``mode="mask"``: the whole packed sequence in one forward under its ``(T, T)`` mask: the literal
  layout, but attention over ``T^2`` pairs of which most are masked (slower once windows are long).

The *prefix loss* (:func:`packed_losses` with ``prefix=True``): the window's own next-token losses, which
read no passage. At inference the prefix's keys and values are computed without any passage (that is what
keeps them reusable), so its tokens are plain language modelling; the window forward already computes
them, and scoring them costs one projection onto the vocabulary.

    >>> p = pack_window([1, 2, 3, 4, 5, 6], [2, 4], [[90, 7, 91], [90, 8, 91]], stride=2)
    >>> collate_packed([p], pad_id=0)["prefix_labels"].tolist()      # window tokens after the first
    [[2, 3, 4, 5, 6]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..patterns import block_owners, build_block, echo_span

PACKABLE = ("append", "none")
MODES = ("segments", "mask")


@dataclass
class PackedSequence:
    """One packed window: ids, positions, who-sees-what, and which logits score which targets."""

    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    segment: list[int] = field(default_factory=list)      # -1: window token; j: segment of point j
    sees_window: list[int] = field(default_factory=list)  # window tokens visible: own index + 1, or i
    predict_at: list[int] = field(default_factory=list)   # index whose logits predict targets[n]
    targets: list[int] = field(default_factory=list)
    slots: list[tuple[int, int]] = field(default_factory=list)   # (point number, offset in stride)
    copy_candidates: list[int] = field(default_factory=list)    # per target (training/unlikelihood.py), or none

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def window_length(self) -> int:
        """Tokens of the window itself (they come first)."""
        return self.segment.count(-1)


def pack_window(window: Sequence[int], points: Sequence[int], blocks: Sequence[Sequence[int]], stride: int,
                echo: int = 0, block_positions: str = "after", keep_unchanged: bool = False) -> PackedSequence:
    """Lay out ``window`` once plus one segment per retrieval point (``blocks[j]`` belongs to ``points[j]``).

    ``points`` are offsets in the window with a full stride after them; ``echo`` repeats the last
    ``echo`` tokens before the point after a non-empty block (the append + echo layout). Positions are
    :func:`flashback_rag.patterns.logical_positions`'s: with ``block_positions="before"`` a block sits
    at ``-len(block)..-1`` and the echo and the copied chunk keep their window positions.
    ``keep_unchanged``: consecutive points with the same block share one segment, as decoding keeps an
    unchanged block (``patterns.block_owners``): the block once, then the text from the first point to
    the end of the last one's stride, every point's targets reading the block placed at the first.

        >>> p = pack_window([1, 2, 3, 4, 5, 6], [2, 4], [[90, 7, 91], [90, 7, 91]], stride=2, keep_unchanged=True)
        >>> p.input_ids[6:], p.position_ids[6:]
        ([90, 7, 91, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7, 8])
        >>> [p.input_ids[i] for i in p.predict_at], p.targets
        ([91, 3, 4, 5], [3, 4, 5, 6])
    """
    window = [int(t) for t in window]
    length = len(window)
    packed = PackedSequence(input_ids=list(window), position_ids=list(range(length)),
                            segment=[-1] * length, sees_window=list(range(1, length + 1)))
    owners = block_owners(blocks, keep_unchanged)
    base = end = 0         # where the current segment's text starts in the packed sequence; its window end
    for j, (at, block) in enumerate(zip(points, blocks)):
        if at < 1 or at + stride > length:
            raise ValueError(f"retrieval point {at} needs a prefix and a full stride inside a window of {length}")
        if j and at < points[j - 1] + stride and owners[j] != j:
            raise ValueError("a kept block needs retrieval points at least a stride apart")
        chunk = window[at:at + stride]
        if not block:                       # nothing between prefix and target: score in the window
            for t in range(stride):
                packed.predict_at.append(at + t - 1)
                packed.targets.append(chunk[t])
                packed.slots.append((j, t))
            continue
        owner = points[owners[j]]
        if owners[j] == j:                  # a new segment: block + echo, then the text from the point on
            first, _ = echo_span(at, 0, echo)
            body = list(block) + window[first:at]
            packed.input_ids += body
            if block_positions == "before":
                packed.position_ids += list(range(-len(block), 0)) + list(range(first, at))
            else:
                packed.position_ids += list(range(at, at + len(body)))
            packed.segment += [j] * len(body)
            packed.sees_window += [at] * len(body)
            base, end = len(packed.input_ids), at
        # the segment's text grows to the end of this point's stride (a kept point continues it)
        more = window[end:at + stride]
        last = packed.position_ids[-1]
        packed.input_ids += more
        packed.position_ids += (list(range(end, at + stride)) if block_positions == "before"
                                else list(range(last + 1, last + 1 + len(more))))
        packed.segment += [owners[j]] * len(more)
        packed.sees_window += [owner] * len(more)
        end = at + stride
        for t in range(stride):
            packed.predict_at.append(base + (at - owner) + t - 1)    # the token before each target
            packed.targets.append(chunk[t])
            packed.slots.append((j, t))
    return packed


def attention_mask(packed: PackedSequence, width: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """Additive mask ``(1, 1, width, width)``: 0 where a query may attend to a key, the dtype's min elsewhere.

    A key in the window is visible to a query that sees at least that many window tokens; a key in a
    segment only to later (or the same) tokens of that segment. Padding (past ``len(packed)``) sees
    only itself, so no softmax row is empty.
    """
    n = len(packed)
    width = width or n
    seg = torch.tensor(packed.segment, dtype=torch.long)
    sees = torch.tensor(packed.sees_window, dtype=torch.long)
    index = torch.arange(n)
    key_in_window = (seg[None, :] == -1) & (index[None, :] < sees[:, None])
    same_segment = (seg[None, :] == seg[:, None]) & (seg[None, :] >= 0) & (index[None, :] <= index[:, None])
    allowed = torch.eye(width, dtype=torch.bool)
    allowed[:n, :n] = key_in_window | same_segment
    mask = torch.zeros((width, width), dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def collate_packed(sequences: Sequence[PackedSequence], pad_id: int, mode: str = "segments") -> dict[str, Any]:
    """A batch of packed sequences; ``labels`` are the targets ``(B, N)`` (-100 where a row has fewer).

    ``mode="segments"`` keeps the sequences themselves (``packed``: run by :func:`packed_token_nll`);
    ``mode="mask"`` right-pads them into ids, positions, the 4D mask and ``predict_at`` ``(B, N)`` (rows
    with fewer targets repeat their last index). Sequences that carry copy candidates give
    ``copy_candidates`` ``(B, N)`` too (-1 where none).
    """
    if mode not in MODES:
        raise ValueError(f"unknown packing mode {mode!r}; choose one of {', '.join(MODES)}")
    most = max(len(p.targets) for p in sequences)
    batch = len(sequences)
    # "labels" (not "targets"): the Trainer computes an evaluation loss only for batches that have labels
    targets = torch.full((batch, most), -100, dtype=torch.long)
    for row, p in enumerate(sequences):
        targets[row, :len(p.targets)] = torch.tensor(p.targets, dtype=torch.long)
    extra = {}
    if all(p.copy_candidates for p in sequences):
        candidates = torch.full((batch, most), -1, dtype=torch.long)
        for row, p in enumerate(sequences):
            candidates[row, :len(p.copy_candidates)] = torch.tensor(p.copy_candidates, dtype=torch.long)
        extra["copy_candidates"] = candidates
    # the prefix loss's labels: every window token after the first, predicted by the one before it
    windows = [p.input_ids[:p.window_length] for p in sequences]
    prefix_labels = torch.full((batch, max(1, max(len(w) for w in windows) - 1)), -100, dtype=torch.long)
    for row, w in enumerate(windows):
        prefix_labels[row, :len(w) - 1] = torch.tensor(w[1:], dtype=torch.long)
    if mode == "segments":
        return {"packed": list(sequences), "pad_id": pad_id, "labels": targets, "prefix_labels": prefix_labels,
                **extra}
    width = max(len(p) for p in sequences)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    pos = torch.zeros((batch, width), dtype=torch.long)
    predict = torch.zeros((batch, most), dtype=torch.long)
    masks = []
    for row, p in enumerate(sequences):
        ids[row, :len(p)] = torch.tensor(p.input_ids)
        pos[row, :len(p)] = torch.tensor(p.position_ids)
        pos[row, len(p):] = torch.arange(len(p), width)         # padding: any position, it is masked off
        k = len(p.targets)
        predict[row, :k] = torch.tensor(p.predict_at)
        predict[row, k:] = p.predict_at[-1] if k else 0
        masks.append(attention_mask(p, width))
    return {"input_ids": ids, "position_ids": pos, "attention_mask": torch.cat(masks), "predict_at": predict,
            "labels": targets, "prefix_labels": prefix_labels, **extra}


def packed_token_nll(model, batch: dict[str, Any], banned: Sequence[int] = ()) -> torch.Tensor:
    """Negative log-likelihood of every target ``(B, N)`` (0 where the label is -100), with gradients."""
    return packed_losses(model, batch, banned)[0]


def packed_losses(model, batch: dict[str, Any], banned: Sequence[int] = (), prefix: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target NLL (B, N), prefix NLL (B, L - 1) or None)``, 0 where a label is -100, with gradients.

    With ``prefix`` the window's own tokens are scored too (``batch["prefix_labels"]``): plain language
    modelling on the text the prefix's cache is computed from, at no extra forward.
    """
    logits, prefix_logits = packed_logits(model, batch, banned, prefix)
    nll = token_nll(logits, batch["labels"])                                                 # (B, N)
    if prefix_logits is None:
        return nll, None
    return nll, token_nll(prefix_logits, batch["prefix_labels"])                            # (B, W)


def packed_logits(model, batch: dict[str, Any], banned: Sequence[int] = (), prefix: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits behind :func:`packed_losses` (float, ``banned`` ids masked): ``(B, N, V)`` for the
    targets and, with ``prefix``, ``(B, L - 1, V)`` for the window's own next tokens."""
    from .data import mask_banned

    targets = batch["labels"]
    prefix_logits = None
    if "packed" in batch:
        device = targets.device
        rows = [_segments_logits(model, p, batch["pad_id"], device, prefix) for p in batch["packed"]]
        width = targets.shape[1]
        logits = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[0])) for r, _ in rows])
        if prefix:
            width = batch["prefix_labels"].shape[1]
            prefix_logits = torch.stack([torch.nn.functional.pad(w, (0, 0, 0, width - w.shape[0]))
                                         for _, w in rows])
    else:
        keep = batch["predict_at"]
        if prefix:        # the window's positions too: (B, N) targets then (B, W) window tokens
            width = batch["prefix_labels"].shape[1]
            keep = torch.cat([keep, torch.arange(width, device=keep.device).expand(keep.shape[0], -1)], 1)
        kept = rows_logits(model, keep, input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           attention_mask=batch["attention_mask"])
        logits = kept[:, :targets.shape[1]]
        if prefix:
            prefix_logits = kept[:, targets.shape[1]:]
    logits = mask_banned(logits.float(), banned)
    return logits, (None if prefix_logits is None else mask_banned(prefix_logits.float(), banned))


def rows_logits(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """The logits at each row's own positions ``keep`` (B, K): ``(B, K, V)``, from one forward.

    Only transformers >= 5.2x reads a 2D ``logits_to_keep`` per row; 5.17 (and older) index every row
    with the whole tensor, logits (B, B, K, V) that look right at batch 1 and are wrong beyond. So the
    model keeps the union of the rows' positions (a 1D tensor: every version reads it alike) and each
    row takes its own from those.
    """
    union = torch.unique(keep)                                       # sorted, (U,)
    out = model(**inputs, logits_to_keep=union)                      # (B, U, V)
    where = torch.searchsorted(union, keep)                          # (B, K): each position's column
    return torch.take_along_dim(out.logits, where[..., None], dim=1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    out = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                            ignore_index=-100, reduction="none")
    return out.view(labels.shape)


def _segments_logits(model, p: PackedSequence, pad_id: int, device, prefix: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(N, V)`` for the targets of ``p`` (the window once, then every segment over its cache),
    and with ``prefix`` those of the window's own next tokens ``(L - 1, V)``."""
    from transformers import DynamicCache

    from ..kv_cache import cache_keyword

    length = p.window_length                              # the window's tokens come first
    keyword = cache_keyword(model)
    in_window = [n for n, i in enumerate(p.predict_at) if i < length]
    if prefix:            # every window position: its targets and the window's own next tokens
        keep = torch.arange(length, device=device)
    else:
        keep = torch.tensor([p.predict_at[n] for n in in_window] or [length - 1], device=device)
    # 1. the window: causal, positions 0..L-1, keys and values kept            (1, L) -> (1, Kw, V)
    out = model(input_ids=torch.tensor([p.input_ids[:length]], device=device),
                position_ids=torch.arange(length, device=device)[None], use_cache=True, logits_to_keep=keep)
    window_logits = out.logits[0]
    prefix_logits = window_logits[:length - 1] if prefix else None
    if prefix:
        window_logits = window_logits[[p.predict_at[n] for n in in_window]]
    spans = _segment_spans(p, length)
    if not spans:
        return window_logits[:len(in_window)], prefix_logits
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    # 2. every segment at once over the window's keys and values                (P, m) -> (P, s, V)
    width = max(end - start for start, end, _ in spans)
    count, most = len(spans), max(len(t) for _, _, t in spans)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    pos = torch.zeros((count, width), dtype=torch.long)
    sees = torch.zeros(count, dtype=torch.long)
    lengths = torch.zeros(count, dtype=torch.long)
    keep_rows = torch.zeros((count, most), dtype=torch.long)
    for r, (start, end, predicted) in enumerate(spans):
        ids[r, :end - start] = torch.tensor(p.input_ids[start:end])
        pos[r, :end - start] = torch.tensor(p.position_ids[start:end])
        pos[r, end - start:] = p.position_ids[end - 1] + 1 + torch.arange(width - (end - start))   # padding
        sees[r], lengths[r] = p.sees_window[start], end - start
        keep_rows[r, :len(predicted)] = torch.tensor([i - start for i in predicted])
    q = torch.arange(width)
    window_keys = torch.arange(length)[None, None, :] < sees[:, None, None]                    # (P, 1, L)
    own_keys = (q[None, None, :] <= q[None, :, None]) & (q[None, None, :] < lengths[:, None, None])  # (P, m, m)
    allowed = torch.cat([window_keys.expand(count, width, length), own_keys], dim=-1)
    mask = torch.zeros(allowed.shape, dtype=next(model.parameters()).dtype)
    mask.masked_fill_(~allowed, torch.finfo(mask.dtype).min)
    shared = DynamicCache()
    for layer, held in enumerate(cache.layers):
        shared.update(held.keys.expand(count, -1, -1, -1), held.values.expand(count, -1, -1, -1), layer)
    seg_logits = rows_logits(model, keep_rows.to(device), input_ids=ids.to(device), position_ids=pos.to(device),
                             attention_mask=mask[:, None].to(device), use_cache=True, **{keyword: shared})  # (P, most, V)
    # back to target order: each target's logits from the window or from its segment row
    where = {}
    for r, (_, _, predicted) in enumerate(spans):
        for k, i in enumerate(predicted):
            where[i] = len(in_window) + r * most + k
    for k, n in enumerate(in_window):
        where[p.predict_at[n]] = k
    table = torch.cat([window_logits[:len(in_window)], seg_logits.reshape(-1, seg_logits.shape[-1])])
    return table[torch.tensor([where[i] for i in p.predict_at], device=table.device)], prefix_logits


def _segment_spans(p: PackedSequence, length: int) -> list[tuple[int, int, list[int]]]:
    """``(start, end, predict_at indices inside)`` of every segment, in order."""
    spans: list[tuple[int, int, list[int]]] = []
    index = length
    while index < len(p):
        end = index
        while end < len(p) and p.segment[end] == p.segment[index]:
            end += 1
        spans.append((index, end, [i for i in p.predict_at if index <= i < end]))
        index = end
    return spans


def window_blocks(record: dict[str, Any], pattern: str, markers=None, top_k: int | None = None) -> list[list[int]]:
    """The passage block of every point of a window record (empty for ``none``)."""
    if pattern == "none":
        return [[] for _ in record["points"]]
    return [build_block(passages[:top_k], markers) for passages in record["passages"]]


def pack_record(record: dict[str, Any], pattern: str, markers=None, top_k: int | None = None,
                echo: int = 0, stride: int | None = None, block_positions: str = "after",
                copy_min_match: int | None = None, keep_unchanged: bool = False) -> PackedSequence:
    """A prepared window record (``flashback prepare``) packed for ``pattern`` (append or none).

    ``copy_min_match``: also find every target's copy candidate (``training/unlikelihood.py``) in the
    passages the block holds. ``keep_unchanged``: points that find the block in place keep it (decoding's
    default), so consecutive points with equal passages share one segment.
    """
    if pattern not in PACKABLE:
        raise ValueError(f"the {pattern!r} layout cannot be packed (its prefix attends to the passage)")
    stride = stride or record["stride"]
    packed = pack_window(record["tokens"], record["points"], window_blocks(record, pattern, markers, top_k),
                         stride, echo if pattern == "append" else 0,
                         block_positions if pattern == "append" else "after",
                         keep_unchanged and pattern == "append")
    if copy_min_match is not None:
        from .unlikelihood import copy_candidates

        found = [[] for _ in record["points"]] if pattern == "none" else [ps[:top_k] for ps in record["passages"]]
        packed.copy_candidates = copy_candidates(record["tokens"], record["points"], found, stride, copy_min_match)
    return packed


def unpack_window(window: Sequence[int], points: Sequence[int], passages: Sequence[Sequence[Sequence[int]]],
                  stride: int, keep_unchanged: bool = False) -> list[dict[str, Any]]:
    """The separate examples a packed window stands for: ``src = x[:i]``, ``tgt = x[i:i+s]`` per point.

    With ``keep_unchanged`` a point whose passages equal those in place gets the ``block_point`` of the
    point that placed them (``patterns.block_owners``):

        >>> [ex.get("block_point") for ex in unpack_window(range(9), [2, 4, 6], [[[7]], [[7]], [[8]]], 2, True)]
        [None, 2, None]
    """
    window = list(window)
    owners = block_owners([build_block(found) for found in passages], keep_unchanged)
    examples = []
    for j, (at, found) in enumerate(zip(points, passages)):
        example = {"passages": [list(p) for p in found], "src": window[:at], "tgt": window[at:at + stride], "point": at}
        if owners[j] != j:
            example["block_point"] = points[owners[j]]
        examples.append(example)
    return examples


def unpack_record(record: dict[str, Any], top_k: int | None = None, keep_unchanged: bool = False
                  ) -> list[dict[str, Any]]:
    """Separate examples of a prepared window record (for layouts that cannot be packed); ``top_k`` is
    the passages the layout will read (what decides whether two points' blocks are equal)."""
    passages = [found[:top_k] for found in record["passages"]]
    return unpack_window(record["tokens"], record["points"], passages, record["stride"], keep_unchanged)
