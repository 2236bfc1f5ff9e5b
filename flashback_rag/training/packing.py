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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..patterns import build_block, echo_span

PACKABLE = ("append", "none")


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

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_window(window: Sequence[int], points: Sequence[int], blocks: Sequence[Sequence[int]], stride: int,
                echo: int = 0) -> PackedSequence:
    """Lay out ``window`` once plus one segment per retrieval point (``blocks[j]`` belongs to ``points[j]``).

    ``points`` are offsets in the window with a full stride after them; ``echo`` repeats the last
    ``echo`` tokens before the point after a non-empty block (the append + echo layout).
    """
    window = [int(t) for t in window]
    length = len(window)
    packed = PackedSequence(input_ids=list(window), position_ids=list(range(length)),
                            segment=[-1] * length, sees_window=list(range(1, length + 1)))
    for j, (at, block) in enumerate(zip(points, blocks)):
        if at < 1 or at + stride > length:
            raise ValueError(f"retrieval point {at} needs a prefix and a full stride inside a window of {length}")
        chunk = window[at:at + stride]
        if not block:                       # nothing between prefix and target: score in the window
            for t in range(stride):
                packed.predict_at.append(at + t - 1)
                packed.targets.append(chunk[t])
                packed.slots.append((j, t))
            continue
        first, _ = echo_span(at, 0, echo)
        body = list(block) + window[first:at]                      # block + echo, then the copied chunk
        base = len(packed.input_ids)
        packed.input_ids += body + chunk
        packed.position_ids += list(range(at, at + len(body) + stride))
        packed.segment += [j] * (len(body) + stride)
        packed.sees_window += [at] * (len(body) + stride)
        for t in range(stride):
            packed.predict_at.append(base + len(body) + t - 1)     # last of block/echo, then the copies
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


def collate_packed(sequences: Sequence[PackedSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed sequences into a batch: ids, positions, 4D mask, and the scoring indices.

    ``predict_at`` is ``(B, N)``, ``labels`` the targets ``(B, N)`` (rows with fewer targets repeat their
    last index, with label -100).
    """
    width = max(len(p) for p in sequences)
    most = max(len(p.targets) for p in sequences)
    batch = len(sequences)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    pos = torch.zeros((batch, width), dtype=torch.long)
    predict = torch.zeros((batch, most), dtype=torch.long)
    targets = torch.full((batch, most), -100, dtype=torch.long)
    masks = []
    for row, p in enumerate(sequences):
        ids[row, :len(p)] = torch.tensor(p.input_ids)
        pos[row, :len(p)] = torch.tensor(p.position_ids)
        # padding continues the positions (any value works: it is masked off)
        pos[row, len(p):] = torch.arange(len(p), width) if width > len(p) else pos[row, len(p):]
        k = len(p.targets)
        predict[row, :k] = torch.tensor(p.predict_at)
        predict[row, k:] = p.predict_at[-1] if k else 0
        targets[row, :k] = torch.tensor(p.targets)
        masks.append(attention_mask(p, width))
    # "labels" (not "targets"): the Trainer computes an evaluation loss only for batches that have labels
    return {"input_ids": ids, "position_ids": pos, "attention_mask": torch.cat(masks), "predict_at": predict,
            "labels": targets}


def packed_token_nll(model, batch: dict[str, torch.Tensor], banned: Sequence[int] = ()) -> torch.Tensor:
    """Negative log-likelihood of every target ``(B, N)`` (0 where the target is -100), with gradients."""
    from .data import mask_banned

    predict, targets = batch["predict_at"], batch["labels"]
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                attention_mask=batch["attention_mask"], logits_to_keep=predict)
    logits = mask_banned(out.logits.float(), banned)                      # (B, N, V)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="none")
    return nll.view(targets.shape)


def window_blocks(record: dict[str, Any], pattern: str, markers=None, top_k: int | None = None) -> list[list[int]]:
    """The passage block of every point of a window record (empty for ``none``)."""
    if pattern == "none":
        return [[] for _ in record["points"]]
    return [build_block(passages[:top_k], markers) for passages in record["passages"]]


def pack_record(record: dict[str, Any], pattern: str, markers=None, top_k: int | None = None,
                echo: int = 0, stride: int | None = None) -> PackedSequence:
    """A prepared window record (``flashback prepare``) packed for ``pattern`` (append or none)."""
    if pattern not in PACKABLE:
        raise ValueError(f"the {pattern!r} layout cannot be packed (its prefix attends to the passage)")
    stride = stride or record["stride"]
    return pack_window(record["tokens"], record["points"], window_blocks(record, pattern, markers, top_k),
                       stride, echo if pattern == "append" else 0)


def unpack_window(window: Sequence[int], points: Sequence[int], passages: Sequence[Sequence[Sequence[int]]],
                  stride: int) -> list[dict[str, Any]]:
    """The separate examples a packed window stands for: ``src = x[:i]``, ``tgt = x[i:i+s]`` per point."""
    window = list(window)
    return [{"passages": [list(p) for p in found], "src": window[:at], "tgt": window[at:at + stride], "point": at}
            for at, found in zip(points, passages)]


def unpack_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Separate examples of a prepared window record (for layouts that cannot be packed)."""
    return unpack_window(record["tokens"], record["points"], record["passages"], record["stride"])
