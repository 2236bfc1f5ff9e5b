"""``flashback eval ppl``: perplexity of the ``tgt`` tokens, for any pattern, with or without an adapter.

Three protocols:

- :func:`prepared_perplexity`: on prepared examples (``flashback prepare``), the layout of the chosen
  pattern. ``top_k`` passages either go in one block (``multi="concat"``, what the engine decodes
  with) or each in its own context, the next-token distributions averaged over the passages
  (``multi="average"``: the seed's ``test_multiple_k.py`` averages the logits; ``"average-probs"``
  averages probabilities, REPLUG-style).
- :func:`windows_perplexity`: on prepared windows, every point's ``stride`` targets with the window before
  it as context; packed (``training/packing.py``: the window read once) for append and none, separate
  examples for prepend. Same numbers either way; :func:`window_token_nll` gives the per-token losses
  ``(points, stride)`` the quality benchmark bootstraps and averages by position.
- :func:`text_perplexity`: sliding-window perplexity on raw text (In-Context RALM's protocol): every
  ``stride`` tokens, retrieve with the last ``query_tokens`` tokens, score the next ``stride`` tokens
  with as much preceding text as fits ``max_positions``. Its ``ppl_ci`` is a 95% bootstrap interval over
  runs of 256 scored tokens, and its per-chunk losses let :func:`compare_text_results` give the paired
  ratio of two runs on the same text (``flashback eval ppl --text ... --compare OTHER.json``).

    >>> from flashback_rag.models import load_model
    >>> model, tok = load_model("tiny-random-llama")
    >>> ex = [{"passages": [[65, 66]], "src": [67] * 20, "tgt": [68] * 8}]
    >>> r = prepared_perplexity(model, tok, ex, pattern="append", markers=True)
    >>> r["tokens"], r["pattern"], r["ppl"] > 1
    (8, 'append', True)

Markers are never predicted: their logits are masked, as in training. ppl = exp(total NLL / tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .data import LeftPadCollator, batched, layout_item, mask_banned, tail_logits, token_nll
from .intervals import bootstrap_means, group_sums, ppl_interval, ratio_interval
from .packing import PACKABLE, collate_packed, pack_record, packed_token_nll, unpack_record

MULTI = ("concat", "average", "average-probs")
GROUP_TOKENS = 256        # text_perplexity's bootstrap resamples runs of this many scored tokens ...
MIN_GROUPS = 10           # ... and gives no interval from fewer runs than this


def _markers_for(model, tokenizer, pattern: str, markers: bool):
    from ..models import add_marker_tokens, marker_ids

    if pattern == "none" or not markers:
        return None
    found = marker_ids(tokenizer)
    return found if found is not None else add_marker_tokens(model, tokenizer)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _setup(model, tokenizer, pattern: str, markers: bool, echo: int):
    """Eval mode; (markers the layout uses, ids never predicted, echo the layout uses, pad id, device)."""
    from ..models import marker_ids

    model.eval()
    marks = _markers_for(model, tokenizer, pattern, markers)
    found = marker_ids(tokenizer)        # any marker in the vocabulary is never predicted, used or not
    banned = sorted(set(marks.as_list() if marks else []) | set(found.as_list() if found else []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return marks, banned, echo if pattern == "append" else 0, pad, _device(model)


def retrieved_once(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The windows as retrieve-once reads them: every point keeps the passages of the window's first point
    (retrieval at the prompt only; with ``keep_unchanged`` append then reads one block for the window).

        >>> retrieved_once([{"points": [4, 8], "passages": [[[1]], [[2]]], "passage_ids": [["a"], ["b"]]}])[0]["passages"]
        [[[1]], [[1]]]
    """
    out = []
    for r in records:
        once = dict(r, passages=[r["passages"][0]] * len(r["points"]))
        if "passage_ids" in r:
            once["passage_ids"] = [r["passage_ids"][0]] * len(r["points"])
        out.append(once)
    return out


@torch.no_grad()
def window_token_nll(model, tokenizer, records: Sequence[dict[str, Any]], pattern: str = "append",
                     markers: bool = True, top_k: int | None = None, echo: int = 0, pack: bool = True,
                     batch_size: int = 4, show_progress: bool = False, block_positions: str = "after",
                     keep_unchanged: bool = True, retrieve: str = "periodic") -> torch.Tensor:
    """Per-token NLL ``(points, stride)`` of every point of ``records`` (in order), on the CPU.

    ``pack``: append / none read each window once (``batch_size`` windows a forward); otherwise, and
    always for prepend, one left-padded example per point (``batch_size`` x 8 examples a forward).
    ``keep_unchanged`` and ``retrieve`` mean what they mean in ``FlashBackConfig``: a point that finds the
    block in place keeps it (append), and ``"once"`` gives every point the first point's passages.
    """
    from tqdm.auto import tqdm

    from ..config import RETRIEVE

    if not records:
        raise ConfigError("no windows to evaluate")
    if retrieve not in RETRIEVE:
        raise ConfigError(f"unknown retrieve {retrieve!r}; choose one of {', '.join(RETRIEVE)}")
    if retrieve == "once":
        records = retrieved_once(records)
    keep = keep_unchanged and pattern == "append"
    marks, banned, echo, pad, device = _setup(model, tokenizer, pattern, markers, echo)
    rows: list[torch.Tensor] = []
    if pack and pattern in PACKABLE:
        bar = tqdm(total=len(records), desc=f"ppl {pattern}", unit=" win", disable=not show_progress)
        for chunk in batched(list(records), batch_size):
            packed = [pack_record(r, pattern, marks, top_k, echo, block_positions=block_positions,
                                  keep_unchanged=keep) for r in chunk]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in collate_packed(packed, pad).items()}
            nll = packed_token_nll(model, batch, banned).float().cpu()
            for row, p in enumerate(packed):                       # (point, offset) slots, in order
                rows.append(nll[row, :len(p.targets)].view(len(chunk[row]["points"]), -1))
            bar.update(len(chunk))
    else:
        collate = LeftPadCollator(pad)
        items = [layout_item(ex, pattern, marks, top_k, echo=echo, block_positions=block_positions)
                 for r in records for ex in unpack_record(r, top_k, keep)]
        # Batches of similar lengths waste little on padding; the rows go back in point order after.
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
        scored: list[torch.Tensor | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"ppl {pattern}", unit=" ex", disable=not show_progress)
        for chunk in batched(order, batch_size * 8):
            batch = {k: v.to(device) for k, v in collate([items[i] for i in chunk]).items()}
            nll, _ = token_nll(model, batch, banned)
            for row, i in enumerate(chunk):
                scored[i] = nll[row].float().cpu()
            bar.update(len(chunk))
        rows = [torch.stack(scored)]
    bar.close()
    return torch.cat(rows)


def windows_perplexity(model, tokenizer, records: Sequence[dict[str, Any]], pattern: str = "append",
                       markers: bool = True, top_k: int | None = None, echo: int = 0, pack: bool = True,
                       batch_size: int = 4, show_progress: bool = False, block_positions: str = "after",
                       keep_unchanged: bool = True, retrieve: str = "periodic") -> dict[str, Any]:
    """Perplexity over prepared windows, plus the mean loss at each offset after the retrieval point."""
    started = time.perf_counter()
    nll = window_token_nll(model, tokenizer, records, pattern, markers, top_k, echo, pack, batch_size,
                           show_progress, block_positions, keep_unchanged, retrieve)
    mean = float(nll.mean())
    return {"pattern": pattern, "markers": markers and pattern != "none", "top_k": top_k, "echo_tokens": echo,
            "block_positions": block_positions if pattern == "append" else "after",
            "keep_unchanged": keep_unchanged and pattern == "append", "retrieve": retrieve,
            "packed": pack and pattern in PACKABLE, "windows": len(records), "examples": int(nll.shape[0]),
            "tokens": int(nll.numel()), "nll": mean, "ppl": math.exp(mean),
            "nll_by_position": [round(float(v), 5) for v in nll.mean(0)], "seconds": time.perf_counter() - started}


@torch.no_grad()
def prepared_perplexity(model, tokenizer, examples: Sequence[dict[str, Any]], pattern: str = "append",
                        markers: bool = True, top_k: int | None = None, multi: str = "concat",
                        batch_size: int = 8, show_progress: bool = False, echo: int = 0,
                        block_positions: str = "after") -> dict[str, Any]:
    """Perplexity of ``tgt`` over ``examples`` laid out for ``pattern``."""
    from tqdm.auto import tqdm

    if multi not in MULTI:
        raise ConfigError(f"unknown multi-passage scoring {multi!r}; choose one of {', '.join(MULTI)}")
    if not examples:
        raise ConfigError("no examples to evaluate")
    marks, banned, echo, pad, device = _setup(model, tokenizer, pattern, markers, echo)
    collate = LeftPadCollator(pad)
    sums: list[float] = []               # summed NLL of every example's targets, in order
    started = time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"ppl {pattern}", unit=" ex", disable=not show_progress)
    for chunk in batched(list(examples), batch_size):
        if multi == "concat" or pattern == "none":
            items = [layout_item(ex, pattern, marks, top_k, echo=echo, block_positions=block_positions)
                     for ex in chunk]
            batch = {k: v.to(device) for k, v in collate(items).items()}
            nll, _ = token_nll(model, batch, banned)
            sums.extend(float(v) for v in nll.sum(-1))
        else:
            sums.extend(_averaged_nll(model, ex, pattern, marks, top_k, multi, banned, collate, device, echo,
                                      block_positions)[0] for ex in chunk)
        bar.update(len(chunk))
    bar.close()
    count = sum(len(ex["tgt"]) for ex in examples)
    mean = sum(sums) / max(count, 1)
    return {"pattern": pattern, "markers": marks is not None, "top_k": top_k, "multi": multi, "echo_tokens": echo,
            "block_positions": block_positions if pattern == "append" else "after",
            "examples": len(examples), "tokens": count, "nll": mean, "ppl": math.exp(mean),
            "seconds": time.perf_counter() - started, "example_nll": sums}


def _averaged_nll(model, ex, pattern, marks, top_k, multi, banned, collate, device, echo=0,
                  block_positions="after") -> tuple[float, int]:
    """One context per passage; average their next-token logits (or probabilities), score ``tgt``."""
    passages = ex["passages"][:top_k] or [[]]
    items = [layout_item(ex, pattern, marks, passages=[p] if p else [], echo=echo, block_positions=block_positions)
             for p in passages]
    batch = {k: v.to(device) for k, v in collate(items).items()}
    n = len(ex["tgt"])
    logits = mask_banned(tail_logits(model, batch["input_ids"], batch["attention_mask"], n,
                                     batch.get("position_ids")).float(), banned)
    if multi == "average":
        logp = torch.log_softmax(logits.mean(0), -1)                       # (n, V)
    else:
        logp = torch.logsumexp(torch.log_softmax(logits, -1), 0) - math.log(len(items))
    target = torch.tensor(ex["tgt"], device=device)
    return float(-logp.gather(-1, target[:, None]).sum()), n


@torch.no_grad()
def text_perplexity(model, tokenizer, text: str, retriever=None, pattern: str = "append", markers: bool = True,
                    stride: int = 16, query_tokens: int = 32, doc_tokens: int = 128, top_k: int = 1,
                    max_positions: int | None = None, max_tokens: int | None = None, batch_size: int = 8,
                    passage_template: str = "{title}\n{text}", show_progress: bool = False,
                    echo: int = 0, group_tokens: int = GROUP_TOKENS, block_positions: str = "after",
                    keep_unchanged: bool = True) -> dict[str, Any]:
    """Sliding-window perplexity of raw ``text`` with retrieval every ``stride`` tokens.

    ``keep_unchanged`` (append): a point whose passages equal the previous point's reads the block where
    the first of them placed it (as decoding keeps it), unless that place has slid out of the scored
    chunk's context; then the block sits at the point itself.

    Every token after the first ``stride`` is scored once, with the longest preceding context that fits
    ``max_positions`` next to the passage block (the first stride has no query to retrieve with).
    ``ppl_ci``: 95% bootstrap interval over runs of ``group_tokens`` scored tokens (None below
    ``MIN_GROUPS`` runs); ``chunk_nll``: the summed loss of every scored chunk, for
    :func:`compare_text_results`.
    """
    from ..models import max_positions as model_max_positions
    from .prepare import PrepareConfig, make_examples

    if pattern != "none" and retriever is None:
        raise ConfigError(f"pattern {pattern!r} needs a retriever (--index)")
    tokens = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if max_positions is not None:
        from .validation import check_positions

        check_positions(max_positions, model, "the context (max_positions)", "give {limit} or less")
    limit = max_positions or model_max_positions(model) or 1024
    echo = echo if pattern == "append" else 0
    points = list(range(stride, len(tokens) - stride + 1, stride))
    if not points:
        raise ConfigError(f"the text has {len(tokens)} tokens: too short for a stride of {stride}")
    if pattern == "none":
        examples = [{"passages": [], "src": tokens[max(0, i - (limit - stride)):i], "tgt": tokens[i:i + stride]}
                    for i in points]
    else:            # (the passage block's room is checked only where there is a block)
        cfg = PrepareConfig(stride=stride, query_tokens=query_tokens, doc_tokens=doc_tokens, top_k=top_k,
                            max_positions=limit, construction="default", min_context=stride,
                            passage_template=passage_template, echo_tokens=echo)
        examples = make_examples(tokens, retriever, tokenizer, cfg, "text", points)
        if keep_unchanged and pattern == "append":
            place_kept_blocks(examples, top_k)
    result = prepared_perplexity(model, tokenizer, examples, pattern, markers, top_k, "concat", batch_size,
                                 show_progress, echo=echo, block_positions=block_positions)
    chunk_nll = result.pop("example_nll")
    sums, counts = text_groups(chunk_nll, [len(ex["tgt"]) for ex in examples], stride, group_tokens)
    result.update(stride=stride, max_positions=limit, text_tokens=len(tokens), group_tokens=group_tokens,
                  keep_unchanged=keep_unchanged and pattern == "append",
                  groups=len(counts), ppl_ci=None, chunk_nll=[round(v, 5) for v in chunk_nll],
                  text_fingerprint=tokens_fingerprint(tokens))
    if len(counts) >= MIN_GROUPS:
        result["ppl_ci"] = ppl_interval(bootstrap_means({"run": sums}, counts)["run"])
    else:
        result["ppl_ci_note"] = _too_short(len(counts), group_tokens)
    return result


def place_kept_blocks(examples: list[dict[str, Any]], top_k: int | None = None) -> None:
    """Give consecutive examples (one per retrieval point, each ``src`` ending at its ``point``) whose
    passages are unchanged the ``block_point`` of the point that placed them, where their ``src`` still
    holds it (``patterns.block_owners``)."""
    from ..patterns import block_owners, build_block

    owners = block_owners([build_block(ex["passages"][:top_k]) for ex in examples])
    for ex, owner in zip(examples, owners):
        offset = examples[owner]["point"] - (ex["point"] - len(ex["src"]))     # the owner's point in this src
        if ex is not examples[owner] and offset >= 0:
            ex["block_point"] = offset


def _too_short(groups: int, group_tokens: int) -> str:
    return (f"no interval: the scored text makes {groups} runs of {group_tokens} tokens, fewer than the "
            f"{MIN_GROUPS} a bootstrap needs (score more text)")


def text_groups(chunk_nll: Sequence[float], chunk_tokens: Sequence[int], stride: int,
                group_tokens: int = GROUP_TOKENS):
    """Per-group summed NLL and tokens: runs of consecutive chunks covering ``group_tokens`` of text, the
    bootstrap's unit (neighbouring chunks share their context, so they are not independent draws)."""
    return group_sums(torch.tensor(chunk_nll, dtype=torch.float64), torch.tensor(chunk_tokens),
                      max(1, group_tokens // stride))


def tokens_fingerprint(tokens: Sequence[int]) -> str:
    """A hash of the scored token ids: two results compare only when they scored the same tokens (the
    same text with the same tokenizer), not merely as many of them."""
    import hashlib

    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:16]


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_text_results(result: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The paired perplexity ratio of two ``text_perplexity`` results on the same tokens of the same text."""
    keys = ("text_tokens", "stride", "tokens")
    if not isinstance(other, dict) or "chunk_nll" not in other:
        raise ConfigError("the result to compare with has no per-chunk losses: write it with "
                          "`flashback eval ppl --text ... --output FILE`")
    if not isinstance(other["chunk_nll"], list) or not all(_finite_number(v) for v in other["chunk_nll"]) \
            or not _finite_number(other.get("ppl")):
        raise ConfigError("the result to compare with holds a 'ppl' or 'chunk_nll' that is not a list of finite "
                          "numbers (a damaged or hand-edited file): write it again with `flashback eval ppl --text "
                          "... --output FILE`")
    differ = [f"{k} {other.get(k)} vs {result.get(k)}" for k in keys if other.get(k) != result.get(k)]
    if differ or len(other["chunk_nll"]) != len(result["chunk_nll"]):
        raise ConfigError("the two results did not score the same tokens (" + (", ".join(differ) or "chunks")
                          + "): compare runs on the same text with the same --stride and --max-tokens")
    if "text_fingerprint" not in other:
        raise ConfigError("the result to compare with records no fingerprint of the tokens it scored (an older "
                          "flashback-rag wrote it), so it may come from another text: run it again")
    if other["text_fingerprint"] != result.get("text_fingerprint"):
        raise ConfigError("the two results did not score the same tokens (as many, but other ones: another text "
                          "or another tokenizer): compare runs on the same text with the same tokenizer")
    stride, group_tokens = result["stride"], result.get("group_tokens", GROUP_TOKENS)
    tokens = [stride] * len(result["chunk_nll"])
    ours, counts = text_groups(result["chunk_nll"], tokens, stride, group_tokens)
    theirs, _ = text_groups(other["chunk_nll"], tokens, stride, group_tokens)
    point = math.exp((float(ours.sum()) - float(theirs.sum())) / float(counts.sum()))
    if len(counts) < MIN_GROUPS:
        return {"ppl": other["ppl"], "ratio": point, "ratio_ci": None,
                "ratio_ci_note": _too_short(len(counts), group_tokens)}
    draws = bootstrap_means({"a": ours, "b": theirs}, counts)
    ratio = ratio_interval(ours, theirs, counts, draws["a"], draws["b"])
    return {"ppl": other["ppl"], "ratio": ratio[0], "ratio_ci": ratio[1:]}
