"""From a prepared example to the tokens a model reads, batches of them, and the loss on ``tgt``.

An example holds ``passages`` (k lists of token ids, no markers), ``src`` and ``tgt``. The layout of a
pattern is :func:`flashback_rag.patterns.logical_context` with the retrieval point at ``len(src)``, so
training reads exactly what decoding reads:

    >>> from flashback_rag.models import MarkerIds
    >>> ex = {"passages": [[7, 8], [9]], "src": [1, 2, 3], "tgt": [4, 5]}
    >>> layout(ex, "append", MarkerIds(100, 101))
    [1, 2, 3, 100, 7, 8, 9, 101, 4, 5]
    >>> layout(ex, "prepend", MarkerIds(100, 101), top_k=1)
    [100, 7, 8, 101, 1, 2, 3, 4, 5]
    >>> layout(ex, "append", None)          # naive append: no markers
    [1, 2, 3, 7, 8, 9, 4, 5]
    >>> layout(ex, "none", None)
    [1, 2, 3, 4, 5]
    >>> layout(ex, "append", MarkerIds(100, 101), echo=2)   # append + echo: the last 2 src tokens again
    [1, 2, 3, 100, 7, 8, 9, 101, 2, 3, 4, 5]
    >>> layout({**ex, "block_point": 1}, "append", MarkerIds(100, 101))   # a block kept since point 1
    [1, 100, 7, 8, 9, 101, 2, 3, 4, 5]

``block_point`` (optional, default ``len(src)``): where in ``src`` the block sits, for an example whose
retrieval point kept the block an earlier point placed (``patterns.block_owners``); the tokens between
are context, not targets.

``tgt`` is always the tail of the layout. Batches are therefore LEFT-padded: the targets of every row
sit in the same last columns, so the model only computes logits for those (``logits_to_keep``) instead
of the whole sequence times the vocabulary.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import FlashBackError
from ..patterns import build_block, logical_context, logical_positions


def layout(example: dict[str, Any], pattern: str, markers=None, top_k: int | None = None,
           passages: Sequence[Sequence[int]] | None = None, echo: int = 0) -> list[int]:
    """Token ids of ``example`` laid out for ``pattern``: the first ``top_k`` passages in one block."""
    chosen = example["passages"][:top_k] if passages is None else passages
    block = build_block(chosen, markers) if pattern != "none" else []
    src, tgt = list(example["src"]), list(example["tgt"])
    return logical_context(pattern, src + tgt, point=block_point(example), block=block, echo=echo)


def block_point(example: dict[str, Any]) -> int:
    """Where an example's block sits in its ``src``: at its end unless an earlier point's block was kept."""
    point = example.get("block_point", len(example["src"]))
    if not 0 <= point <= len(example["src"]):
        raise FlashBackError(f"an example's block_point {point} is outside its src of {len(example['src'])} tokens")
    return point


def layout_item(example: dict[str, Any], pattern: str, markers=None, top_k: int | None = None,
                passages: Sequence[Sequence[int]] | None = None, echo: int = 0,
                block_positions: str = "after") -> dict[str, Any]:
    """What a batch holds of one example: ``input_ids``, ``n_tgt`` and, where the layout has its own
    positions (``block_positions="before"``), ``position_ids``."""
    item = {"input_ids": layout(example, pattern, markers, top_k, passages, echo), "n_tgt": len(example["tgt"])}
    chosen = example["passages"][:top_k] if passages is None else passages
    block = build_block(chosen, markers) if pattern != "none" else []
    src, tgt = list(example["src"]), list(example["tgt"])
    positions = logical_positions(pattern, src + tgt, block_point(example), block, echo=echo,
                                  block_positions=block_positions)
    if positions is not None:
        item["position_ids"] = positions
    return item


def read_examples(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Examples of one split: a ``.jsonl`` file, or the folder of shards ``prepare`` writes."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FlashBackError(f"no prepared examples at {path}")
    return read_jsonl_records(files, limit)


def read_jsonl_records(files: Sequence[Path], limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON records of ``files`` (one a line, blank lines skipped), at most ``limit`` of them."""
    out: list[dict[str, Any]] = []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    out.append(json.loads(line))
                    if limit is not None and len(out) >= limit:
                        return out
    return out


class LayoutDataset(torch.utils.data.Dataset):
    """Prepared examples laid out for one pattern; items are ``{"input_ids", "n_tgt"}``."""

    def __init__(self, examples: list[dict[str, Any]], pattern: str, markers=None, top_k: int | None = None,
                 echo: int = 0, block_positions: str = "after"):
        self.items = [layout_item(ex, pattern, markers, top_k, echo=echo, block_positions=block_positions)
                      for ex in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class LeftPadCollator:
    """Left-pad a list of ``{"input_ids", "n_tgt"}`` into tensors; ``labels`` is -100 outside ``tgt``.

    Items with their own ``position_ids`` give the batch a ``position_ids`` tensor (the others count
    their real tokens from 0; padding sits at 0).
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        positions = (torch.zeros((len(items), width), dtype=torch.long)
                     if any("position_ids" in it for it in items) else None)
        for row, it in enumerate(items):
            seq = torch.tensor(it["input_ids"], dtype=torch.long)
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
            n = it["n_tgt"]
            labels[row, width - n:] = seq[len(seq) - n:]
            if positions is not None:
                positions[row, width - len(seq):] = torch.tensor(it.get("position_ids", range(len(seq))))
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if positions is not None:
            batch["position_ids"] = positions
        return batch


def _accepts(model, name: str) -> bool:
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return name in inspect.signature(forward).parameters


def tail_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``(B, keep, V)`` that predict the last ``keep`` tokens of each left-padded row."""
    # Positions count real tokens only (left padding must not shift them), unless the layout has its own.
    if position_ids is None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = position_ids
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep + 1
    logits = model(**kwargs).logits              # (B, T or keep+1, V)
    return logits[:, -keep - 1:-1, :]             # the logit at p predicts the token at p+1


def mask_banned(logits: torch.Tensor, banned: Sequence[int]) -> torch.Tensor:
    """Markers are never predicted: their logits are -inf, so probability mass is over real tokens."""
    if not banned:
        return logits
    logits = logits.clone()
    logits[..., list(banned)] = float("-inf")
    return logits


def token_nll(model, batch: dict[str, torch.Tensor], banned: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``(B, keep)`` of the ``tgt`` tokens of a left-padded batch (0 outside ``tgt``), and the
    targets ``(B, keep)`` (-100 outside ``tgt``)."""
    labels = batch["labels"]
    keep = int((labels != -100).sum(-1).max())
    logits = tail_logits(model, batch["input_ids"], batch["attention_mask"], keep,
                         batch.get("position_ids"))                                    # (B, keep, V)
    logits = mask_banned(logits.float(), banned)
    targets = labels[:, -keep:]                                                        # (B, keep)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="none")
    return nll.view(targets.shape), targets


def target_nll(model, batch: dict[str, torch.Tensor], banned: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the ``tgt`` tokens of a batch and their count."""
    nll, targets = token_nll(model, batch, banned)
    return nll.sum(), (targets != -100).sum()


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
