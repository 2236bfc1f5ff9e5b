"""How a context is laid out: where the passage block goes for append / prepend / none.

One function, :func:`logical_context`, defines the token sequence the model reads at any moment. The
cached decoding loop, the reference (recompute) mode, data preparation and evaluation all use it, so
the layout trained on is the layout decoded with.

    >>> from flashback_rag.patterns import build_block, logical_context, logical_positions
    >>> from flashback_rag.models import MarkerIds
    >>> block = build_block([[7, 8]], MarkerIds(100, 101))
    >>> block
    [100, 7, 8, 101]
    >>> tokens = [1, 2, 3, 4, 5]             # prompt + generated so far; retrieval happened at 3
    >>> logical_context("append", tokens, point=3, block=block)
    [1, 2, 3, 100, 7, 8, 101, 4, 5]
    >>> logical_context("prepend", tokens, point=3, block=block)
    [100, 7, 8, 101, 1, 2, 3, 4, 5]
    >>> logical_context("append", tokens, point=3, block=block, echo=2)   # echo the last 2 prefix tokens
    [1, 2, 3, 100, 7, 8, 101, 2, 3, 4, 5]
    >>> logical_positions("append", tokens, point=3, block=block, echo=2, block_positions="before")
    [0, 1, 2, -4, -3, -2, -1, 1, 2, 3, 4]

Keeping an unchanged block: when a retrieval point returns the block already in place, the block stays
where it was inserted, so the point it belongs to (``point`` above) is the earlier one and the text after
it grows past one stride. :func:`block_owners` says, for a run of retrieval points, which point each
one's block belongs to; decoding, training and evaluation all place blocks by it.

    >>> blocks = [block, block, build_block([[9]], MarkerIds(100, 101))]
    >>> block_owners(blocks)                   # points 0 and 1 share one block; point 2 brings another
    [0, 0, 2]
    >>> logical_context("append", tokens + [6, 7], point=3, block=block)   # at the second point (5): kept
    [1, 2, 3, 100, 7, 8, 101, 4, 5, 6, 7]

Append at retrieval point i: ``x[:i] + [MARK_L] + passages + [MARK_R] + x[i:]``: no prefix token ever
attends to a passage, which is what keeps its cached keys and values exact across re-retrievals.
Append with echo ``k``: ``x[:i] + [MARK_L] + passages + [MARK_R] + x[i-k:i] + x[i:]``; the echoed
copy belongs to the block (it is cropped with it), so the same invariant holds. No block, no echo.
Prepend: ``passages + x`` (after a leading BOS "anchor" if the tokenizer adds one).
Position ids (:func:`logical_positions`) are ``0..n-1`` in the order above, except for append with
``block_positions="before"``: the block sits at the positions before the first token, as a prepended
block would, and the echo and the text keep their own positions, so the tokens after the block read the
prefix at its usual distances.
Tokens before ``window`` (but after the anchor) have slid out of the context window.
"""

from __future__ import annotations

from collections.abc import Sequence

from .retrievers.base import Passage


def build_block(passages: Sequence[Sequence[int]], markers=None) -> list[int]:
    """The passage block: passages in rank order, inside one marker pair when markers are on.

    No passages means no block at all (not an empty marker pair).
    """
    body = [tok for passage in passages for tok in passage]
    if not body:
        return []
    if markers is None:
        return body
    return [markers.left, *body, markers.right]


def keeps_block(new: Sequence[int], current: Sequence[int], keep_unchanged: bool = True) -> bool:
    """Whether a retrieval point that found block ``new`` keeps ``current``, the block in place.

    Only a real block equal token for token is kept: the model would read exactly the same passage,
    so nothing needs to be re-fed. No block is never "kept" (there is nothing in place to keep).
    """
    return keep_unchanged and bool(new) and list(new) == list(current)


def block_owners(blocks: Sequence[Sequence[int]], keep_unchanged: bool = True) -> list[int]:
    """For consecutive retrieval points with these blocks, the index of the point that placed each one's block.

    A point keeps the block in place (:func:`keeps_block`) and then belongs to the point that placed
    it; any other point places its own block (or none) at itself.

        >>> block_owners([[5, 6], [5, 6], [7], [7], [5, 6]])
        [0, 0, 2, 2, 4]
        >>> block_owners([[5, 6], [5, 6]], keep_unchanged=False)
        [0, 1]
        >>> block_owners([[], []])
        [0, 1]
    """
    owners: list[int] = []
    for j, block in enumerate(blocks):
        kept = bool(owners) and keeps_block(block, blocks[owners[-1]], keep_unchanged)
        owners.append(owners[-1] if kept else j)
    return owners


def echo_span(point: int, start: int, echo: int) -> tuple[int, int]:
    """``(first, point)``: the prefix tokens an echo of ``echo`` repeats (never before ``start``)."""
    return max(start, point - echo), point


def logical_context(pattern: str, tokens: Sequence[int], point: int, block: Sequence[int],
                    anchor: int = 0, window: int = 0, echo: int = 0) -> list[int]:
    """The full sequence the model reads after ``tokens`` (prompt + generated), for ``pattern``.

    point:   the retrieval point the current block belongs to (append puts it there): the latest one,
             or an earlier one whose block later points kept (:func:`block_owners`).
    anchor:  leading tokens that always stay first (a BOS the tokenizer added), never slid out.
    window:  index of the first non-anchor token still inside the context window.
    echo:    append only: repeat the last ``echo`` tokens before ``point`` after the block.
    """
    head = list(tokens[:anchor])
    start = max(anchor, window)
    if pattern == "append":
        first, _ = echo_span(point, start, echo if block else 0)
        return (head + list(tokens[start:point]) + list(block) + list(tokens[first:point])
                + list(tokens[point:]))
    if pattern == "prepend":
        return head + list(block) + list(tokens[start:])
    return head + list(tokens[start:])


def logical_positions(pattern: str, tokens: Sequence[int], point: int, block: Sequence[int],
                      anchor: int = 0, window: int = 0, echo: int = 0, block_positions: str = "after"
                      ) -> list[int] | None:
    """Position ids of :func:`logical_context`'s sequence, or None where they are simply ``0..n-1``.

    Only the appended layout with ``block_positions="before"`` and a block has others: the block takes
    ``-len(block)..-1`` (the positions a prepended block would have relative to the text), the echo
    repeats its tokens' own positions, and the text after the point continues from the prefix's.
    """
    if pattern != "append" or block_positions != "before" or not block:
        return None
    start = max(anchor, window)
    first, _ = echo_span(point, start, echo)
    prefix = anchor + point - start                  # tokens before the block, at 0..prefix-1
    return (list(range(prefix)) + list(range(-len(block), 0)) + list(range(prefix - (point - first), prefix))
            + list(range(prefix, prefix + len(tokens) - point)))


def format_passage(passage: Passage, template: str = "{title}\n{text}") -> str:
    """Passage text as the model sees it; a line that only held an empty title disappears."""
    if passage.title:
        return template.format(title=passage.title, text=passage.text)
    lines = [line for line in template.split("\n") if "{title}" not in line or "{text}" in line]
    return "\n".join(lines).format(title="", text=passage.text)


def encode_passage(tokenizer, passage: Passage, doc_tokens: int, template: str = "{title}\n{text}"
                   ) -> list[int]:
    """Token ids of one passage, truncated to ``doc_tokens``.

    Retrieved text is data, not markup: special-token strings inside it (say a literal ``<MARK_L>``)
    are split into ordinary tokens, so only the engine can place a marker.
    """
    text = format_passage(passage, template)
    try:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    except TypeError:   # tokenizers without split_special_tokens
        ids = tokenizer(text, add_special_tokens=False).input_ids
    return list(ids[:doc_tokens])
